"""`dptext build-index`: the derived tables every build stores, and (--beam) the exact all-pairs
pass of the index build as a Beam job.

The build is O(n^2 d): 2.2M words take days on one machine. Its unit of work is a row block
(transforms.index_build.row_block: rows [start, stop) against every word, exact on its own), so
the blocks run on any Beam runner's workers, each holding the memory-mapped vectors, and the
driver assembles the exact tables and extremes and writes the index as usual. A retried block
rewrites the same file, so a worker failure never corrupts or duplicates anything.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from dptext.transforms import mechanisms
from dptext.transforms.index_build import Geometry, RowBlock, assemble, row_block

VECTORS_FILE = "vectors.f32"
# The mechanisms whose derived tables `dptext build-index` stores, at their default parameters
# (kde_prior's mh sampler adds the mutual-neighbour graph to the KDE prior; mahalanobis the square
# root of S; diffractor its word lists; custext its output sets and scores; santext_plus the nearest
# sensitive words of the others; syntf the WordNet synonyms of every word, when WordNet is installed).
# Workers only read tables; for other parameters the launcher stores them before the job.
DEFAULT_TABLES = (
    ("kde_prior", {"sampler": "mh"}),
    ("mahalanobis", {}),
    ("diffractor", {}),
    ("custext", {}),
    ("santext_plus", {}),
    ("syntf", {}),
)


def _block_name(start: int) -> str:
    return f"block-{start:012d}.npz"


def _local_vectors(uri: str, n: int, d: int) -> np.ndarray:
    """The staged vectors memory-mapped from local disk (copied once per worker if remote)."""
    if "://" in uri:
        local = os.path.join(tempfile.gettempdir(), "dptext-build-" + uri.replace("/", "_").replace(":", ""))
        if not os.path.isfile(local):
            partial = f"{local}.{os.getpid()}.part"
            with FileSystems.open(uri) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            os.replace(partial, local)
        uri = local
    return np.memmap(uri, dtype="<f4", mode="r", shape=(n, d))


class RowBlockFn(beam.DoFn):
    """Computes one row block against all words and writes it to the staging location."""

    def __init__(self, staging: str, n: int, d: int, neighbours: int):
        self.staging, self.n, self.d, self.neighbours = staging, n, d, neighbours

    def setup(self):
        vectors = _local_vectors(FileSystems.join(self.staging, VECTORS_FILE), self.n, self.d)
        self.geometry = Geometry(vectors)

    def process(self, span):
        start, stop = span
        block = row_block(self.geometry, start, stop, self.neighbours)
        buffer = io.BytesIO()
        np.savez(buffer, **{f: getattr(block, f) for f in RowBlock.__dataclass_fields__ if f != "start"})
        with FileSystems.create(FileSystems.join(self.staging, _block_name(start))) as out:
            out.write(buffer.getvalue())
        beam.metrics.Metrics.counter("dptext", "index_rows").inc(stop - start)
        yield start


def _read_block(staging: str, start: int) -> RowBlock:
    with FileSystems.open(FileSystems.join(staging, _block_name(start))) as handle:
        arrays = np.load(io.BytesIO(handle.read()))
        return RowBlock(start=start, **{name: arrays[name] for name in arrays.files})


def beam_tables(
    vectors: np.ndarray,
    neighbours: int,
    beam_args: list[str],
    staging: str | None = None,
    rows_per_block: int | None = None,
):
    """The exact tables of `vectors`, with the row blocks computed by a Beam job.

    staging: a directory every worker can read and write (a gs:// prefix on a cluster; a local
    temporary directory by default, which suits the DirectRunner and the portable runner here).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    own_staging = staging is None
    staging = staging or tempfile.mkdtemp(prefix="dptext-build-")
    staging = FileSystems.join(staging, uuid.uuid4().hex[:12])  # one build's files, never mixed
    with FileSystems.create(FileSystems.join(staging, VECTORS_FILE)) as out:
        out.write(vectors.astype("<f4", copy=False).tobytes())
    geometry = Geometry(vectors)
    step = rows_per_block or geometry.chunk_rows()
    spans = [(s, min(s + step, n)) for s in range(0, n, step)]
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        _ = (
            p
            | "RowBlocks" >> beam.Create(spans)
            | "Spread" >> beam.Reshuffle()
            | "ExactNeighbours" >> beam.ParDo(RowBlockFn(staging, n, d, neighbours))
        )
    tables = assemble(geometry, [_read_block(staging, start) for start, _ in spans])
    FileSystems.delete([m.path for m in FileSystems.match([FileSystems.join(staging, "*")])[0].metadata_list])
    if own_staging:
        shutil.rmtree(os.path.dirname(staging), ignore_errors=True)
    return tables


def store_default_tables(index) -> None:
    """Store beside a freshly built index the tables of DEFAULT_TABLES, by building each mechanism
    as a job's launcher would (the same code computes the same table key). Tables do not depend on
    epsilon; 1 only satisfies the constructors. A mechanism that cannot run on this embedding at
    its defaults (a singular covariance, say) is reported on stderr and skipped."""
    for name, params in DEFAULT_TABLES:
        try:
            mechanisms.create(name, index, 1.0, **params)
        except ValueError as err:  # not a TableError: a failure to store stops the build
            print(
                f"dptext build-index: note: {name} cannot run on this index at its default parameters ({err})",
                file=sys.stderr,
            )
