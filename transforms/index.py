"""EmbeddingIndex: the index directory every worker loads (build, save, load, lookup, nearest).

This module is the only place that knows the directory's files. Arrays are raw little-endian
files that numpy memory-maps, so every process on a machine shares one copy in the page cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from dptext.transforms.errors import DptextError, ParameterError
from dptext.transforms.index_build import Tables, build_tables, candidate_order
from dptext.transforms.numerics import U32, gamma32

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.txt"
VECTORS = "vectors.f32"
NEIGHBOUR_IDS = "neighbour_ids.i32"
NEIGHBOUR_DISTANCES = "neighbour_distances.f32"
ANNOY = "annoy.ann"

TABLE_LOCK = ".tables.lock"
VERIFIED = "verified"  # under the machine's index cache: markers of indexes whose hashes were checked

DEFAULT_NEIGHBOURS = 64
DEFAULT_ANNOY_TREES = 16


class IndexLoadError(DptextError, RuntimeError):
    """A missing, corrupt or inconsistent index directory."""


class TableError(IndexLoadError):
    """A derived table a worker does not find in the index, or the launcher cannot store beside it."""


# Where a missing table comes from; every table error says it.
TABLE_SOURCES = (
    "workers only read tables stored with the index: `dptext build-index` stores those of the "
    "default parameters, the launcher (`dptext run`) any other before the job starts"
)


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

    def __init__(
        self,
        path: Path,
        manifest: dict,
        words: list[str],
        vectors: np.ndarray,
        neighbour_ids: np.ndarray,
        neighbour_distances: np.ndarray,
    ):
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
        self.read_only = False  # a worker's index: stored tables only (see table)
        self.location = str(path)  # where tables are stored: this directory, or the gs:// URI loaded
        self._added: dict[str, tuple[dict, dict]] = {}  # tables this process stored: key -> (entry, file meta)

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

    def nearest_words(
        self,
        points: np.ndarray,
        m: int = 1,
        method: str = "exact",
        search_k: int = -1,
        sources: np.ndarray | None = None,
    ) -> np.ndarray:
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
            raise ParameterError(f"unknown nearest-word search {method!r}; valid: annoy, exact")
        forest = self._annoy.get()
        found = [forest.get_nns_by_vector(p, m, search_k) for p in points.astype(np.float32)]
        short = np.array([len(f) < m for f in found], dtype=bool)
        out = np.empty((len(points), m), dtype=np.int32)
        if (~short).any():
            out[~short] = np.array([f for f, s in zip(found, short) if not s], dtype=np.int32)
        if short.any():
            out[short] = self.nearest_words(
                points[short], m, "exact", sources=None if sources is None else np.asarray(sources)[short]
            )
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
        for s in range(0, len(hopeful), 256):  # bounds the (rows, K + 1, d) float64 differences
            rows = hopeful[s : s + 256]
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
            block = points[s : s + rows_per_product]
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
            limit = score[:, m - 1] + _float32_score_error(p_norm[s : s + rows_per_product], self._max_norm, self.d)
            clear = score[:, m] > limit if peel > m else np.ones(len(block), dtype=bool)
            c = np.flatnonzero(clear)
            cand = best[c, :m]
            exact = np.linalg.norm(vectors[cand].astype(np.float64) - block[c, None, :], axis=2)
            order = np.lexsort((cand, exact), axis=1)
            ids[s + c], dist[s + c] = np.take_along_axis(cand, order, 1), np.take_along_axis(exact, order, 1)
            for j in range(peel):  # the peeled scores back, for the rows that need them
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
    def table(
        self, name: str, compute: Callable[["EmbeddingIndex"], np.ndarray], params: dict | None = None
    ) -> np.ndarray:
        """A table that depends only on the embedding (a KDE prior, a covariance square root),
        stored beside the index with the manifest updated, memory-mapped.

        `params` (JSON-able) are part of the table's identity: other parameters, another table.
        A read-only index (a worker's) returns stored tables and never computes one: a missing
        table is a TableError naming it. Otherwise (the launcher, `dptext build-index`) a missing
        table is computed once and stored beside the index, local or remote (see _store_table).
        """
        key = table_key(name, params)
        if key in self._tables:
            return self._tables[key]
        entry = self.manifest.get("tables", {}).get(key)
        if entry is not None:
            self._tables[key] = self._map_table(entry)
        elif self.read_only:
            raise TableError(
                f"{self.location}: the index has no table {key!r} ({_describe_table(name, params)}); "
                f"{TABLE_SOURCES}. Launch again against this index, or add the table to the index "
                "a copy was made from and copy it again"
            )
        else:
            self._tables[key] = self._store_table(key, name, params, compute)
        return self._tables[key]

    def ensure_tables_stored(self) -> None:
        """The launcher's last word on tables: every table this process stored is listed in the
        manifest the workers will read. A concurrent launcher's manifest write (remote indexes have
        no lock) may have replaced ours since; the entries are then written again."""
        if not self._added:
            return
        store = _TableStore(self.location, self.path)
        try:
            with store.locked():
                store.publish(self._added, self.manifest)
        except IndexLoadError:
            raise
        except Exception as err:  # OSError, or a remote filesystem's own error class
            raise _store_failed(self.location, ", ".join(map(repr, self._added)), err) from None

    def _map_table(self, entry: dict) -> np.ndarray:
        meta = self.manifest["files"][entry["file"]]
        return np.memmap(self.path / entry["file"], dtype=np.dtype(meta["dtype"]), mode="r", shape=tuple(meta["shape"]))

    def _store_table(
        self, key: str, name: str, params: dict | None, compute: Callable[["EmbeddingIndex"], np.ndarray]
    ) -> np.ndarray:
        """Compute a missing table and store it beside the index: the table file first (named by its
        hash, so two launchers never overwrite each other's), then the manifest naming it, so no
        reader sees a manifest naming a missing file. A local index serialises processes on a lock
        file (one computes, the others then read its table); the manifest is re-read first in
        either case, since another process may have stored the table already."""
        store = _TableStore(self.location, self.path)
        computing = False
        try:
            with store.locked():
                stored = store.manifest()
                _check_same_index(stored, self.manifest, self.location)
                entry = stored.get("tables", {}).get(key)
                if entry is None:
                    store.check_writable(key)  # before the computing, which can take hours
                    started = time.time()
                    computing = True
                    array = np.ascontiguousarray(compute(self))
                    computing = False
                    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
                    digest = hashlib.sha256(array.data).hexdigest()
                    meta = {
                        "sha256": digest,
                        "bytes": array.nbytes,
                        "dtype": array.dtype.str,
                        "shape": list(array.shape),
                    }
                    entry = {
                        "file": f"{key}-{digest[:10]}.{array.dtype.str.lstrip('<|')}",
                        "name": name,
                        "params": params or {},
                        "build_seconds": round(time.time() - started, 2),
                    }
                    store.write(entry["file"], array)
                    store.publish({key: (entry, meta)}, self.manifest)
                    self._added[key] = (entry, meta)
                else:
                    meta = stored["files"][entry["file"]]
                    array = store.read_array(entry["file"], meta) if store.remote else None
        except IndexLoadError:
            raise
        except Exception as err:  # OSError, or a remote filesystem's own error class; compute's own errors pass
            if computing:
                raise
            raise _store_failed(self.location, f"{key!r} ({_describe_table(name, params)})", err) from None
        self.manifest.setdefault("tables", {})[key] = entry
        self.manifest["files"][entry["file"]] = meta
        # A remote index's local copy is named by its old manifest and stays as it was: keep the array.
        return array if store.remote else self._map_table(entry)

    # ---- build ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        words: Sequence[str],
        vectors: np.ndarray,
        out_dir,
        neighbours: int = DEFAULT_NEIGHBOURS,
        annoy_trees: int = DEFAULT_ANNOY_TREES,
        source: dict | None = None,
        progress: bool = True,
        tables: Tables | None = None,
    ) -> "EmbeddingIndex":
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
        files = {
            name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
            for name in (VOCAB, ANNOY, *arrays)
        }
        for name, array in arrays.items():
            files[name].update(dtype=array.dtype.newbyteorder("<").str, shape=list(array.shape))
        manifest = {
            "format_version": FORMAT_VERSION,
            "n": n,
            "d": d,
            "neighbours": neighbours,
            "dmin": tables.dmin,
            "dmin_pair": [words[i] for i in tables.dmin_pair],
            "dmax": tables.dmax,
            "dmax_pair": [words[i] for i in tables.dmax_pair],
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
    def load(cls, path, verify: bool = True, read_only: bool = False) -> "EmbeddingIndex":
        """Memory-map an index directory; verify sizes always and sha256 hashes when asked, once
        per machine (see verify_once).

        A remote index (gs://... or any Beam filesystem URI) is first copied to local disk once
        per machine (see localize), since Annoy and numpy memory-map local files only.
        read_only: a worker's index, whose `table` only reads stored tables; otherwise missing
        tables are computed and stored beside the index (at the URI for a remote one).
        """
        location = str(path)
        if "://" in location:
            path = localize(location)
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise IndexLoadError(f"{path}: index directory not found (build one with `dptext build-index`)")
        if not manifest_path.is_file():
            raise IndexLoadError(f"{manifest_path}: missing manifest; this is not a dptext index directory")
        manifest_bytes = manifest_path.read_bytes()
        try:
            manifest = json.loads(manifest_bytes.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise IndexLoadError(f"{manifest_path}: corrupt manifest ({err})") from None
        if isinstance(manifest, dict) and manifest.get("format_version") != FORMAT_VERSION:
            raise IndexLoadError(
                f"{manifest_path}: index format {manifest.get('format_version')!r} "
                f"is not supported (this dptext reads format {FORMAT_VERSION}); rebuild it"
            )
        check_manifest(manifest, manifest_path)
        for name, meta in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise IndexLoadError(f"{file}: missing from the index directory")
            size = file.stat().st_size
            if size != meta["bytes"]:
                raise IndexLoadError(
                    f"{file}: {size} bytes, the manifest says {meta['bytes']}; the file is truncated or corrupt"
                )
        if verify:
            verify_once(path, manifest_bytes, manifest)
        arrays = {
            name: np.memmap(
                path / name,
                dtype=np.dtype(manifest["files"][name]["dtype"]),
                mode="r",
                shape=tuple(manifest["files"][name]["shape"]),
            )
            for name in (VECTORS, NEIGHBOUR_IDS, NEIGHBOUR_DISTANCES)
        }
        words = (path / VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
        if len(words) != manifest["n"]:
            raise IndexLoadError(f"{path / VOCAB}: {len(words)} words, the manifest says {manifest['n']}")
        index = cls(path, manifest, words, arrays[VECTORS], arrays[NEIGHBOUR_IDS], arrays[NEIGHBOUR_DISTANCES])
        index.read_only, index.location = read_only, location
        return index


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
            raise bad(
                field, f"must be a finite number > 0 (a distance between distinct words), got {manifest[field]!r}"
            )
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
                raise bad(
                    f"{field}.bytes",
                    f"must be {math.prod(shape) * dtype.itemsize} for shape {shape} "
                    f"and dtype {meta['dtype']}, got {meta['bytes']}",
                )
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
    try:
        write(str(partial))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes on one machine, held for the with block."""
    with open(path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _float32_score_error(point_norms: np.ndarray, max_norm: float, d: int) -> np.ndarray:
    """Twice a bound on |float32 (|v|^2 - 2 p.v) - exact| (Higham 3.1 for the dot product)."""
    error = 2 * gamma32(d) * point_norms * max_norm + 4 * U32 * (max_norm**2 + 2 * point_norms * max_norm)
    return 2 * error + 1e-12


def cache_root() -> Path:
    """This machine's index cache (copies of remote indexes, verification markers): DPTEXT_INDEX_CACHE,
    or a directory of this user's under the temporary directory (another user's files there could
    otherwise pass for a verified index)."""
    return Path(os.environ.get("DPTEXT_INDEX_CACHE") or Path(tempfile.gettempdir()) / f"dptext-index-{os.getuid()}")


def _state_key(path: Path, manifest_bytes: bytes, files) -> str:
    """What a verification marker vouches for: the directory, the manifest's bytes and each file's
    device, inode, size, mtime and ctime (a rewrite changes mtime; even one that restores mtime
    changes ctime)."""
    digest = hashlib.sha256(str(path.resolve()).encode() + b"\0" + manifest_bytes)
    for name in sorted(files):
        st = (path / name).stat()
        digest.update(f"\0{name}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}".encode())
    return digest.hexdigest()[:40]


def _write_marker(key: str) -> None:
    markers = cache_root() / VERIFIED
    try:
        markers.mkdir(parents=True, exist_ok=True)
        _write_atomically(markers / key, lambda partial: Path(partial).write_text(f"{time.time()}\n"))
    except OSError:  # an unwritable cache: the next process hashes again, nothing worse
        pass


def verify_once(path: Path, manifest_bytes: bytes, manifest: dict) -> None:
    """Check every file's sha256 against the manifest, once per machine rather than per process.

    A verified directory leaves a marker in the machine's cache keyed by _state_key; a later load
    that finds the marker skips the hashing, and any change to the manifest or to a file's size,
    mtime, ctime or inode makes another key, so the files are hashed again. Processes that start
    together wait on one lock while the first hashes, then find its marker.
    """
    key = _state_key(path, manifest_bytes, manifest["files"])
    markers = cache_root() / VERIFIED
    if (markers / key).is_file():
        return
    with contextlib.ExitStack() as held:
        try:
            markers.mkdir(parents=True, exist_ok=True)
            held.enter_context(_file_lock(markers / f"{key}.lock"))
        except OSError:  # an unwritable cache: this process hashes on its own
            pass
        if (markers / key).is_file():
            return
        for name, meta in manifest["files"].items():
            if sha256_file(path / name) != meta["sha256"]:
                raise IndexLoadError(f"{path / name}: sha256 does not match the manifest; the file is corrupt")
        if _state_key(path, manifest_bytes, manifest["files"]) == key:  # nothing changed while hashing
            _write_marker(key)


def _open_remote(uri: str, name: str):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(FileSystems.join(uri, name), compression_type=CompressionTypes.UNCOMPRESSED)


def localize(uri: str) -> Path:
    """Copy a remote index directory to a local cache once per machine; return the local directory.

    The local directory is named by the hash of the remote manifest, so a rebuilt index (or one
    with a table added) gets a fresh copy. One process copies while the others on the machine wait
    on a lock; each file is hashed as it streams in (a corrupt or replaced object is an error
    naming it), written to a temporary name and renamed into place, and the manifest goes last, so
    no process reads half a file or half a directory. A copy verified in full leaves the
    verification marker, so loading it hashes nothing again.
    """
    try:
        with _open_remote(uri, MANIFEST) as handle:
            manifest_bytes = handle.read()
        manifest = json.loads(manifest_bytes)
    except Exception as err:  # any filesystem's not-found or IO error, or a corrupt manifest
        raise IndexLoadError(f"{uri}/{MANIFEST}: cannot read the index manifest ({err})") from None
    check_manifest(manifest, f"{uri}/{MANIFEST}")
    root = cache_root()
    local = root / hashlib.sha256(uri.encode() + manifest_bytes).hexdigest()[:20]
    if (local / MANIFEST).is_file():
        return local
    local.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f"{local.name}.lock"):
        if (local / MANIFEST).is_file():  # another process copied it while this one waited
            return local
        hashed_all = True
        for name, meta in manifest["files"].items():
            target = local / name
            if target.is_file() and target.stat().st_size == meta["bytes"]:
                hashed_all = False  # left by an interrupted copy: load hashes it
                continue

            def copy(partial, name=name, meta=meta):
                digest = hashlib.sha256()
                with _open_remote(uri, name) as src, open(partial, "wb") as dst:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        dst.write(chunk)
                if digest.hexdigest() != meta["sha256"]:
                    raise IndexLoadError(
                        f"{uri}/{name}: sha256 does not match the manifest; the object is "
                        "corrupt, or the index was replaced while this machine copied it"
                    )

            _write_atomically(target, copy)
        _write_atomically(local / MANIFEST, lambda partial: Path(partial).write_bytes(manifest_bytes))
        if hashed_all:
            _write_marker(_state_key(local, manifest_bytes, manifest["files"]))
    return local


class _TableStore:
    """Where tables are stored beside an index: its local directory (processes on one machine
    serialise on a lock file) or a remote URI through Beam's filesystems (an object appears whole
    when its writer closes it, so writing the table first and the manifest last is atomic enough)."""

    def __init__(self, location: str, local: Path):
        self.location, self.local, self.remote = location, local, "://" in location

    def locked(self):
        return contextlib.nullcontext() if self.remote else _file_lock(self.local / TABLE_LOCK)

    def read(self, name: str) -> bytes:
        if not self.remote:
            return (self.local / name).read_bytes()
        with _open_remote(self.location, name) as handle:
            return handle.read()

    def read_array(self, name: str, meta: dict) -> np.ndarray:
        data = self.read(name)
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise IndexLoadError(f"{self.location}/{name}: sha256 does not match the manifest; the table is corrupt")
        return np.frombuffer(data, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])

    def write(self, name: str, data) -> None:
        """data: bytes, or an array written as its raw bytes."""
        if not self.remote:
            _write_atomically(
                self.local / name,
                data.tofile if isinstance(data, np.ndarray) else lambda partial: Path(partial).write_bytes(data),
            )
            return
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(
            FileSystems.join(self.location, name),
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED,
        ) as handle:
            handle.write(data.tobytes() if isinstance(data, np.ndarray) else data)

    def check_writable(self, key: str) -> None:
        """Write and delete an empty probe file beside the index: fails as storing the table would."""
        probe = f".{key}.{os.getpid()}.probe"
        self.write(probe, b"")
        if not self.remote:
            (self.local / probe).unlink()
            return
        from apache_beam.io.filesystems import FileSystems

        FileSystems.delete([FileSystems.join(self.location, probe)])

    def manifest(self) -> dict:
        where = f"{self.location}/{MANIFEST}" if self.remote else str(self.local / MANIFEST)
        try:
            manifest = json.loads(self.read(MANIFEST))
        except ValueError as err:
            raise IndexLoadError(f"{where}: corrupt manifest ({err})") from None
        check_manifest(manifest, where)
        return manifest

    def publish(self, additions: dict[str, tuple[dict, dict]], loaded: dict, attempts: int = 4) -> None:
        """Add table entries ({key: (entry, file meta)}) to the stored manifest: re-read, add what is
        missing, write, and re-read to confirm, since a remote manifest has no lock and a concurrent
        launcher's write may replace ours. An entry another process stored under the same key stays
        (the same computation; its file is the one its hash names)."""
        for attempt in range(attempts):
            stored = self.manifest()
            _check_same_index(stored, loaded, self.location)
            tables = stored.setdefault("tables", {})
            missing = {key: value for key, value in additions.items() if key not in tables}
            if not missing:
                return
            if attempt == attempts - 1:
                break
            for key, (entry, meta) in missing.items():
                stored["files"][entry["file"]] = meta
                tables[key] = entry
            self.write(MANIFEST, (json.dumps(stored, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        raise TableError(
            f"{self.location}/{MANIFEST}: the table entries {', '.join(map(repr, missing))} were "
            f"written {attempts - 1} times and replaced each time by another writer; launch again "
            "when no other launcher adds tables to this index"
        )


def _check_same_index(stored: dict, loaded: dict, location: str) -> None:
    """A table is stored only beside the index it was computed from (not one rebuilt meanwhile)."""
    for name in (VOCAB, VECTORS, NEIGHBOUR_IDS, NEIGHBOUR_DISTANCES, ANNOY):
        if stored["files"][name]["sha256"] != loaded["files"][name]["sha256"]:
            raise TableError(
                f"{location}: the index there was replaced after this process loaded it ({name} "
                "differs); launch again so the job loads the index as it is now"
            )


def _describe_table(name: str, params: dict | None) -> str:
    return f"{name}, {json.dumps(params, sort_keys=True)}" if params else name


def _store_failed(location: str, what: str, err: BaseException) -> TableError:
    reason = (
        err.strerror
        if isinstance(err, OSError) and err.strerror
        else (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    )
    return TableError(
        f"{location}: cannot store table {what} beside the index ({reason}); {TABLE_SOURCES}. "
        "Launch once with write access to the index (`dptext run` with these parameters, under "
        "credentials that can write there, stores the table), or copy the index to a place the "
        "launcher can write"
    )


def _check_build_inputs(words: list[str], vectors: np.ndarray, neighbours: int) -> None:
    n = len(words)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ParameterError(f"{n} words but vectors of shape {vectors.shape}")
    if n < 2:
        raise ParameterError("an index needs at least 2 words")
    if not 1 <= neighbours <= n - 1:
        raise ParameterError(f"neighbours must be between 1 and n - 1 = {n - 1}, got {neighbours}")
    if len(set(words)) != n:
        raise ParameterError("duplicate words: read_embedding keeps the first of each")
    bad = next((w for w in words if not w or "\n" in w or "\r" in w), None)
    if bad is not None:
        raise ParameterError("a word is empty or contains a line break; the vocabulary file is one word per line")
    if not np.isfinite(vectors).all():
        raise ParameterError("vectors contain NaN or infinity")


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
