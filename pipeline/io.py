"""Readers and writers per format (local paths and globs; any Beam filesystem), and the dead letter.

Records are read as raw bytes with their file and byte offset, so a record that is not UTF-8
or not valid JSON reaches the dead letter with its position instead of failing the job.
"""
from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io import filebasedsource
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.beam import DEAD_LETTER, METRICS_NAMESPACE, Document, dead_letter

FORMATS = ("text", "jsonl")
SUFFIX = {"text": ".txt", "jsonl": ".jsonl"}


def detect_format(pattern: str) -> str:
    """Format from the input's extension (.jsonl/.json -> jsonl, anything else -> text)."""
    stem = pattern[:-3] if pattern.endswith(".gz") else pattern
    return "jsonl" if stem.endswith((".jsonl", ".json", ".ndjson")) else "text"


class _LineSource(filebasedsource.FileBasedSource):
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
    """Every line of every file matching the pattern, with its file and byte offset."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern

    def expand(self, pbegin):
        return pbegin | "ReadLines" >> beam.io.Read(_LineSource(self.pattern))


class ParseRecordFn(beam.DoFn):
    """Raw line -> Document, or a dead-letter record saying why (never the text)."""

    def __init__(self, fmt: str, text_field: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        self.fmt, self.text_field = fmt, text_field
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_lettered")

    def process(self, element):
        source, offset, raw = element
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
        elif self.text_field not in record:
            yield self._reject(source, offset, f"missing text field {self.text_field!r}")
        elif not isinstance(record[self.text_field], str):
            kind = type(record[self.text_field]).__name__
            yield self._reject(source, offset, f"text field {self.text_field!r} is a {kind}, not a string")
        else:
            yield Document(source, offset, record[self.text_field], record)

    def _reject(self, source, offset, reason):
        self._dead.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(source, offset, reason))


def format_document(doc: Document, fmt: str, text_field: str) -> str:
    """A perturbed document as one output line in its input's format."""
    if fmt == "text":
        return doc.text
    record = dict(doc.record)
    record[text_field] = doc.text
    return json.dumps(record, ensure_ascii=False)


class WriteDocuments(beam.PTransform):
    def __init__(self, prefix: str, fmt: str, text_field: str):
        super().__init__()
        self.prefix, self.fmt, self.text_field = prefix, fmt, text_field

    def expand(self, documents):
        return (documents
                | "Format" >> beam.Map(format_document, self.fmt, self.text_field)
                | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=SUFFIX[self.fmt]))


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


def input_files(pattern: str) -> list[str]:
    """The files matching an input pattern; a pattern that matches nothing is a clear error."""
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise FileNotFoundError(f"--input {pattern}: no file matches this path or glob")
    return [m.path for m in matches]
