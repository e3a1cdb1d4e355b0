"""Readers and writers per format (local paths and globs; any Beam filesystem), and the dead letter.

Text and JSONL records are read as raw bytes with their file and byte offset, so a record that
is not UTF-8 or not valid JSON reaches the dead letter with its position instead of failing the
job. Parquet rows are read through Beam's Parquet source with their file and row number.
"""
from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io import filebasedsource, parquetio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.beam import DEAD_LETTER, METRICS_NAMESPACE, Document, dead_letter

FORMATS = ("text", "jsonl", "parquet")
SUFFIX = {"text": ".txt", "jsonl": ".jsonl", "parquet": ".parquet"}


def detect_format(pattern: str) -> str:
    """Format from the input's extension (.jsonl/.json -> jsonl, .parquet -> parquet, else text)."""
    stem = pattern[:-3] if pattern.endswith(".gz") else pattern
    if stem.endswith(".parquet"):
        return "parquet"
    return "jsonl" if stem.endswith((".jsonl", ".json", ".ndjson")) else "text"


class _EvenSplits:
    """Initial splits of equal size within each file.

    Beam cuts a file into pieces of the desired size plus a remainder (an 8.4 MB file at 5.8 MB:
    5.8 + 2.6), and a runner that deals the pieces out in turn then gives one worker every large
    piece. Cutting each file into the same number of pieces, all of one size, keeps workers even.
    """

    def split(self, desired_bundle_size=None, start_position=None, stop_position=None):
        if not desired_bundle_size or start_position is not None or stop_position is not None:
            yield from super().split(desired_bundle_size, start_position, stop_position)
            return
        for whole in super().split(float("inf")):        # one bundle per file
            size = whole.stop_position - whole.start_position
            if size == float("inf"):                       # unsplittable (compressed): whole
                yield whole
                continue
            pieces = max(1, -(-size // desired_bundle_size))
            cuts = [whole.start_position + size * i // pieces for i in range(pieces + 1)]
            for start, stop in zip(cuts, cuts[1:]):
                yield from whole.source.split(float("inf"), start, stop)      # exactly [start, stop)


class _ParquetRowSource(_EvenSplits, parquetio._ParquetSource):
    """Beam's Parquet source, yielding (file, row number, row as a dict); splittable by row group.

    Same claiming as the parent's read_records (one claim per row group, at its file offset),
    keeping track of which row group is read so every row has its number in the file.
    """

    def read_records(self, file_name, range_tracker):
        utils = parquetio._ParquetUtils
        with self.open_file(file_name) as handle:
            pf = pq.ParquetFile(handle)
            groups = utils.get_number_of_row_groups(pf)
            first_rows = np.concatenate(([0], np.cumsum([pf.metadata.row_group(i).num_rows
                                                         for i in range(groups)])))
            index = utils.find_first_row_group_index(pf, range_tracker.start_position() or 0)
            next_start = utils.get_offset(pf, index) if index != -1 else range_tracker.stop_position()
            while range_tracker.try_claim(next_start):
                rows = pf.read_row_group(index, self._columns).to_pylist()
                for j, row in enumerate(rows):
                    yield file_name, int(first_rows[index]) + j, row
                index += 1
                next_start = utils.get_offset(pf, index) if index < groups else range_tracker.stop_position()


class _LineSource(_EvenSplits, filebasedsource.FileBasedSource):
    """Lines as (file, byte offset, raw bytes without the newline); splittable within a file.

    A split starting inside a line skips to the next line start; a line belongs to the split
    that contains its first byte, so every line is read exactly once.
    """

    def __init__(self, pattern: str):
        super().__init__(pattern, compression_type=CompressionTypes.AUTO, splittable=True)

    def read_records(self, file_name, offset_range_tracker):
        start = offset_range_tracker.start_position()
        with self.open_file(file_name) as handle:
            position = 0
            if start > 0:
                handle.seek(start - 1)
                position = start - 1 + len(handle.readline())
            while offset_range_tracker.try_claim(position):
                line = handle.readline()
                if not line:
                    break
                yield file_name, position, line[:-1] if line.endswith(b"\n") else line
                position += len(line)


class ReadRecords(beam.PTransform):
    """Every record of every file matching the pattern, with its file and position."""

    def __init__(self, pattern: str, fmt: str):
        super().__init__()
        self.pattern, self.fmt = pattern, fmt

    def expand(self, pbegin):
        source = _ParquetRowSource(self.pattern) if self.fmt == "parquet" else _LineSource(self.pattern)
        return pbegin | "Read" >> beam.io.Read(source)


class ParseRecordFn(beam.DoFn):
    """Raw line -> Document, or a dead-letter record saying why (never the text)."""

    def __init__(self, fmt: str, text_field: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        self.fmt, self.text_field = fmt, text_field
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_lettered")

    def process(self, element):
        source, offset, raw = element
        if self.fmt == "parquet":
            yield self._document(source, offset, raw)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield self._reject(source, offset, f"not UTF-8 (invalid byte at record byte {err.start})")
            return
        if self.fmt == "text":
            yield Document(source, offset, line)
            return
        try:
            record = json.loads(line)
        except ValueError as err:
            yield self._reject(source, offset, f"invalid JSON ({err.msg} at column {err.colno})")
            return
        if not isinstance(record, dict):
            yield self._reject(source, offset, f"JSON value is a {type(record).__name__}, not an object")
        else:
            yield self._document(source, offset, record)

    def _document(self, source, offset, record: dict):
        """A Document from a JSON object or Parquet row, or the dead-letter record saying why not."""
        if self.text_field not in record:
            return self._reject(source, offset, f"missing text field {self.text_field!r}")
        if not isinstance(record[self.text_field], str):
            kind = type(record[self.text_field]).__name__
            return self._reject(source, offset, f"text field {self.text_field!r} is a {kind}, not a string")
        return Document(source, offset, record[self.text_field], record)

    def _reject(self, source, offset, reason):
        self._dead.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(source, offset, reason))


def format_document(doc: Document, fmt: str, text_field: str):
    """A perturbed document in its input's format: a text line, a JSON line, or a Parquet row."""
    if fmt == "text":
        return doc.text
    record = dict(doc.record)
    record[text_field] = doc.text
    return record if fmt == "parquet" else json.dumps(record, ensure_ascii=False)


class WriteDocuments(beam.PTransform):
    def __init__(self, prefix: str, fmt: str, text_field: str, parquet_schema=None):
        super().__init__()
        self.prefix, self.fmt, self.text_field, self.parquet_schema = prefix, fmt, text_field, parquet_schema

    def expand(self, documents):
        formatted = documents | "Format" >> beam.Map(format_document, self.fmt, self.text_field)
        if self.fmt == "parquet":   # every column keeps the input's type
            return formatted | "Write" >> beam.io.WriteToParquet(self.prefix, self.parquet_schema,
                                                                 file_name_suffix=SUFFIX[self.fmt])
        return formatted | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=SUFFIX[self.fmt])


class WriteDeadLetter(beam.PTransform):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, records):
        return (records
                | "Format" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False, sort_keys=True))
                | "Write" >> beam.io.WriteToText(dead_letter_prefix(self.prefix), file_name_suffix=".jsonl"))


def dead_letter_prefix(prefix: str) -> str:
    return prefix + ".dead_letter"


def write_text_file(path: str, content: str) -> None:
    """Write one small file on any Beam filesystem (local or gs://)."""
    with FileSystems.create(path) as handle:
        handle.write(content.encode("utf-8"))


def parquet_schema(pattern: str, text_field: str):
    """The input files' common Arrow schema; a file without the text column, or with a schema
    unlike the first file's, is an error naming it, raised before any record is read."""
    schema = None
    for path in input_files(pattern):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            this = pq.read_schema(handle)
        if text_field not in this.names:
            raise ValueError(f"{path}: no column {text_field!r} (--text-field); columns: {', '.join(this.names)}")
        if schema is not None and not this.equals(schema):
            raise ValueError(f"{path}: its columns differ from the first input file's; dptext writes one "
                             "schema per output, so every input file must share it")
        schema = schema or this
    return schema


def input_files(pattern: str) -> list[str]:
    """The files matching an input pattern; a pattern that matches nothing is a clear error."""
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise FileNotFoundError(f"--input {pattern}: no file matches this path or glob")
    return [m.path for m in matches]
