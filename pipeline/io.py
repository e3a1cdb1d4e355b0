"""Readers and writers per format (local paths and globs; any Beam filesystem), and the dead letter.

Text and JSONL records are read as raw bytes with their file and byte offset, so a record that
is not UTF-8 or not valid JSON reaches the dead letter with its position instead of failing the
job. Parquet rows are read through Beam's Parquet source with their file and row number.

What the driver checks before the job (`check_inputs`), each a one-line `InputError` naming the
file: the pattern matches files (not a directory); each file's compression is what its name
says; with --format auto, every file's format (from its name) agrees and no file's content
contradicts its name. What the job does with damage it meets while reading: a compressed file
that ends early or stops decompressing gives one dead-letter record at the first record it could
not read, a WARNING naming the file, and the `damaged_files` counter.

A JSONL record is parsed only to find its text field: the line is written back with that one
value replaced, so every other field comes out byte for byte as it came in (numbers of any size,
1.10 and 1e400 as written, key order, escapes). Lone surrogates (a JSON escape such as \\ud83d
without its pair, as in truncated tweets) cannot be UTF-8: in the text field each becomes
U+FFFD (counted in `bad_surrogates`); elsewhere the escape is carried through as written.
"""

from __future__ import annotations

import bz2
import io
import json
import logging
import lzma
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io import filebasedsource, parquetio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from dptext.transforms.beam import DEAD_LETTER, METRICS_NAMESPACE, Document, dead_letter, text_field_problem
from dptext.transforms.errors import DptextError

FORMATS = ("text", "jsonl", "parquet")
SUFFIX = {"text": ".txt", "jsonl": ".jsonl", "parquet": ".parquet"}
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION_NAMES = {
    CompressionTypes.GZIP: "gzip",
    CompressionTypes.BZIP2: "bzip2",
    CompressionTypes.ZSTD: "zstd",
    CompressionTypes.LZMA: "xz/lzma",
    CompressionTypes.DEFLATE: "deflate (zlib)",
}
# (leading bytes, suffix) of the compressions with a magic number: the compression is read from
# the name (as Beam's splitting does), so a compressed file whose name does not say so would be
# read as raw bytes, or split in the middle of a stream.
MAGIC = {
    CompressionTypes.GZIP: (b"\x1f\x8b", ".gz"),
    CompressionTypes.BZIP2: (b"BZh", ".bz2"),
    CompressionTypes.ZSTD: (b"\x28\xb5\x2f\xfd", ".zst"),
    CompressionTypes.LZMA: (b"\xfd7zXZ\x00", ".xz"),
}
SNIFF_BYTES = 1 << 16  # read of each file on the driver: its format, and the first line for a JSONL check
HEADER_BYTES = 64  # compressed bytes that show whether a file is in its compression format at all
UTF8_BOM = b"\xef\xbb\xbf"


class InputError(DptextError, ValueError):
    """The input cannot be read as given; the message names the file and what would work."""


class MissingInput(InputError, FileNotFoundError):
    """No file matches the input pattern."""


# ---------------------------------------------------------------------------------------------
# Driver-side checks: which files, which format, and is each file what its name says.


def compression_of(path: str) -> str:
    """Beam's compression type for a file name (the reader and Beam's splitting agree on it)."""
    return CompressionTypes.detect_compression_type(path)


def detect_format(name: str) -> str:
    """Format from a file name, after any compression suffix: .jsonl/.json/.ndjson -> jsonl,
    .parquet -> parquet, anything else text."""
    stem = name.lower()
    if compression_of(stem) != CompressionTypes.UNCOMPRESSED:
        stem = stem.rsplit(".", 1)[0]
    if stem.endswith(".parquet"):
        return "parquet"
    return "jsonl" if stem.endswith(JSONL_SUFFIXES) else "text"


def check_inputs(pattern: str, requested: str = "auto") -> str:
    """The input's format (`requested` unless it is "auto"), after checking every matching file;
    a file that contradicts its name, or files that disagree, are an InputError naming them."""
    files = input_files(pattern)
    for path in files:
        if detect_format(path) == "parquet" and compression_of(path) != CompressionTypes.UNCOMPRESSED:
            raise InputError(
                f"{path}: a compressed Parquet file is not supported (Parquet compresses its own pages); decompress it"
            )
    if len(files) == 1:
        heads = [_head(files[0])]
    else:  # one small read per file; threads, since on a remote filesystem each is a round trip
        with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
            heads = list(pool.map(_head, files))
    formats: dict[str, str] = {}
    for path, head in zip(files, heads):
        fmt = detect_format(path)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise InputError(
                f"{path}: starts with a UTF-16 byte order mark; dptext reads UTF-8 (convert it, "
                "e.g. iconv -f UTF-16 -t UTF-8)"
            )
        if (fmt if requested == "auto" else requested) == "jsonl" and _first_line(head) in (b"[", b"{"):
            raise InputError(
                f"{path}: is one JSON document over many lines (its first line opens it); dptext "
                "reads JSON lines, one object a line: convert it (e.g. jq -c '.[]')"
            )
        if requested != "auto":
            continue
        if fmt != "parquet" and head.startswith(b"PAR1"):
            raise InputError(
                f"{path}: is a Parquet file (it starts with PAR1) but its name does not end in "
                ".parquet; rename it or pass --format parquet"
            )
        if fmt == "text" and _first_line_is_json_object(head):
            raise InputError(
                f"{path}: its name says text (no .jsonl/.json/.ndjson) but its first line is a JSON "
                "object; pass --format jsonl to read JSON lines, or --format text to perturb every "
                "line as text, keys and all"
            )
        formats.setdefault(fmt, path)
    if len(formats) > 1:
        (fmt_a, path_a), (fmt_b, path_b) = list(formats.items())[:2]
        raise InputError(
            f"--input {pattern}: the files disagree on the format: {path_a} is {fmt_a} and "
            f"{path_b} is {fmt_b} (from their names); narrow --input or choose one with --format"
        )
    return requested if requested != "auto" else next(iter(formats), "text")


def _head(path: str) -> bytes:
    """Up to SNIFF_BYTES of a file's content (decompressed as its name says); InputError when its
    compression is not what its name says."""
    kind = compression_of(path)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        raw = handle.read(SNIFF_BYTES)
    if kind == CompressionTypes.UNCOMPRESSED:
        for other, (magic, _) in MAGIC.items():
            if raw.startswith(magic) and (other != CompressionTypes.BZIP2 or raw[4:10] == b"1AY&SY"):
                raise InputError(
                    f"{path}: is {COMPRESSION_NAMES[other]}-compressed but its name does not say so; "
                    f"add the suffix of its compression ({os.path.basename(path)}{MAGIC[other][1]})"
                )
        return raw
    stream = _decompressor(kind)
    try:  # each library has its own error type (zlib.error, OSError, LZMAError, ZstdError)
        head = stream.decompress(raw[:HEADER_BYTES])
    except Exception as err:
        raise InputError(
            f"{path}: not {COMPRESSION_NAMES[kind]} data, though its name says so (decompressing its "
            f"first bytes fails: {_one_line(str(err))}); rename or recompress it"
        ) from None
    try:  # damage further on is the job's to find and report (it reads every byte)
        return head + stream.decompress(raw[HEADER_BYTES:])
    except Exception:
        return head


def _first_line(head: bytes) -> bytes:
    return head.split(b"\n", 1)[0].removeprefix(UTF8_BOM).strip()


def _first_line_is_json_object(head: bytes) -> bool:
    line = _first_line(head)
    if not line.startswith(b"{") or not line.endswith(b"}"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def input_files(pattern: str) -> list[str]:
    """The files matching an input pattern (a glob lists files only); a pattern that matches
    nothing, names a directory, or a file whose name is not UTF-8 is a clear error."""
    _check_utf8_name(pattern)
    if FileSystems.get_scheme(pattern) is None and os.path.isdir(pattern):
        glob = os.path.join(pattern, "*")
        raise InputError(f"--input {pattern} is a directory; read the files in it with a glob such as {glob}")
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        hint = " (to read a directory, use a glob such as DIR/*)" if pattern.endswith("/") else ""
        raise MissingInput(f"--input {pattern}: no file matches this path or glob{hint}")
    for m in matches:
        _check_utf8_name(m.path)
    return [m.path for m in matches]


def _check_utf8_name(path: str) -> None:
    """Beam encodes options and each record's file name as UTF-8: a local name with other bytes
    (Python's surrogate escapes) would fail the job."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(f"{shown}: this file name is not UTF-8, which Beam needs; rename it") from None


def parquet_schema(pattern: str, text_field: str):
    """The input files' common Arrow schema; a file that is not Parquet, without the text column,
    or with a schema unlike the first file's, is an error naming it, raised before any record is read."""
    schema = None
    for path in input_files(pattern):
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                this = pq.read_schema(handle)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
            raise InputError(
                f"{path}: not a readable Parquet file ({type(err).__name__}: {_one_line(str(err))})"
            ) from None
        if text_field not in this.names:
            raise InputError(f"{path}: no column {text_field!r} (--text-field); columns: {', '.join(this.names)}")
        if schema is not None and not this.equals(schema):
            raise InputError(
                f"{path}: its columns differ from the first input file's; dptext writes one "
                "schema per output, so every input file must share it"
            )
        schema = schema or this
    return schema


def _one_line(message: str, limit: int = 200) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# Reading: sources yielding (file, position, raw record) or (file, position, Unreadable).


class Unreadable(NamedTuple):
    """In place of a raw record: why the reader could not read it (never any of its content)."""

    reason: str
    damaged_file: bool = False  # the file is damaged from here on (not just this record)


class DamagedFile(Exception):
    """A compressed stream that ends early or stops decompressing (data, not I/O, trouble)."""


def _decompressor(kind: str):
    if kind == CompressionTypes.GZIP:
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if kind == CompressionTypes.DEFLATE:
        return zlib.decompressobj()
    if kind == CompressionTypes.BZIP2:
        return bz2.BZ2Decompressor()
    if kind == CompressionTypes.LZMA:
        return lzma.LZMADecompressor()
    if kind == CompressionTypes.ZSTD:
        import zstandard

        return zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj()
    raise ValueError(f"no decompressor for {kind!r}")


class _DecompressedReader(io.RawIOBase):
    """A compressed file's content, one decompressor per concatenated stream (gzip members, bzip2
    streams, zstd frames); DamagedFile when the file ends inside a stream or a stream is corrupt.

    Beam's CompressedFile treats a file that ends inside a stream as a clean end of file, so a
    truncated file would lose its tail silently. Errors of the underlying file (I/O, network)
    propagate unchanged, so the runner retries them rather than dead-lettering good data.
    """

    CHUNK = 1 << 16

    def __init__(self, raw, kind: str):
        super().__init__()
        self._raw, self._kind, self._name = raw, kind, COMPRESSION_NAMES[kind]
        self._stream = None  # the current stream's decompressor, None before the first byte
        self._input = b""  # compressed bytes not yet given to a decompressor
        self._output, self._taken = b"", 0
        self._at_end = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._taken == len(self._output) and not self._at_end:
            self._decompress_more()
        n = min(len(buffer), len(self._output) - self._taken)
        buffer[:n] = self._output[self._taken : self._taken + n]
        self._taken += n
        return n

    def _decompress_more(self) -> None:
        if not self._input:
            self._input = self._raw.read(self.CHUNK)
            if not self._input:
                if self._stream is not None and not self._stream.eof:
                    raise DamagedFile(f"{self._name} file is truncated: it ends inside a compressed stream")
                self._at_end = True
                return
        if self._stream is None or self._stream.eof:
            if self._stream is not None and not self._input.strip(b"\0"):  # zero padding after a stream
                self._input = b""
                return
            self._stream = _decompressor(self._kind)
        try:
            self._output, self._taken = self._stream.decompress(self._input), 0
        except Exception as err:  # zlib.error, OSError (bz2), LZMAError, ZstdError: the data is corrupt
            raise DamagedFile(f"{self._name} data is corrupt ({_one_line(str(err))})") from None
        self._input = self._stream.unused_data if self._stream.eof else b""

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


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
        for whole in super().split(float("inf")):  # one bundle per file
            size = whole.stop_position - whole.start_position
            if size == float("inf"):  # unsplittable (compressed): whole
                yield whole
                continue
            pieces = max(1, -(-size // desired_bundle_size))
            cuts = [whole.start_position + size * i // pieces for i in range(pieces + 1)]
            for start, stop in zip(cuts, cuts[1:]):
                yield from whole.source.split(float("inf"), start, stop)  # exactly [start, stop)


class _ParquetRowSource(_EvenSplits, parquetio._ParquetSource):
    """Beam's Parquet source, yielding (file, row number, row as a dict); splittable by row group.

    Same claiming as the parent's read_records (one claim per row group, at its file offset),
    keeping track of which row group is read so every row has its number in the file. A row with
    a string that is not UTF-8 (a writer that does not validate) comes out as Unreadable; a row
    group that cannot be read at all fails the job with an InputError naming the file.
    """

    def read_records(self, file_name, range_tracker):
        utils = parquetio._ParquetUtils
        with self.open_file(file_name) as handle:
            pf = pq.ParquetFile(handle)
            groups = utils.get_number_of_row_groups(pf)
            first_rows = np.concatenate(([0], np.cumsum([pf.metadata.row_group(i).num_rows for i in range(groups)])))
            index = utils.find_first_row_group_index(pf, range_tracker.start_position() or 0)
            next_start = utils.get_offset(pf, index) if index != -1 else range_tracker.stop_position()
            while range_tracker.try_claim(next_start):
                try:
                    table = pf.read_row_group(index, self._columns)
                except (OSError, ValueError) as err:
                    raise InputError(
                        f"{file_name}: row group {index} cannot be read ({type(err).__name__}: {_one_line(str(err))})"
                    ) from None
                for j, row in enumerate(_rows(table)):
                    yield file_name, int(first_rows[index]) + j, row
                index += 1
                next_start = utils.get_offset(pf, index) if index < groups else range_tracker.stop_position()


def _rows(table) -> list:
    """A table's rows as dicts; a row holding a string that is not UTF-8 as Unreadable instead."""
    try:
        return table.to_pylist()
    except UnicodeDecodeError:
        pass
    rows = []
    for j in range(table.num_rows):
        try:
            rows.append(table.slice(j, 1).to_pylist()[0])
        except UnicodeDecodeError:
            bad = [name for name in table.column_names if not _decodes(table.column(name).slice(j, 1))]
            rows.append(Unreadable(f"column {bad[0]!r} holds a string that is not UTF-8"))
    return rows


def _decodes(column) -> bool:
    try:
        column.to_pylist()
        return True
    except UnicodeDecodeError:
        return False


class _LineSource(_EvenSplits, filebasedsource.FileBasedSource):
    """Lines as (file, byte offset, raw bytes without the newline); splittable within a file.

    A split starting inside a line skips to the next line start; a line belongs to the split
    that contains its first byte, so every line is read exactly once. Only "\\n" ends a line (a
    CR is part of its line's text). In a compressed file, the offset is in the decompressed
    content, and damage ends the file with an Unreadable at the first line that could not be read.
    """

    def __init__(self, pattern: str):
        super().__init__(pattern, compression_type=CompressionTypes.AUTO, splittable=True)

    def open_file(self, file_name):
        raw = FileSystems.open(file_name, compression_type=CompressionTypes.UNCOMPRESSED)
        kind = compression_of(file_name)
        if kind == CompressionTypes.UNCOMPRESSED:
            return raw
        return io.BufferedReader(_DecompressedReader(raw, kind), buffer_size=1 << 16)

    def read_records(self, file_name, offset_range_tracker):
        start = offset_range_tracker.start_position()
        with self.open_file(file_name) as handle:
            position = 0
            if start > 0:
                handle.seek(start - 1)
                position = start - 1 + len(handle.readline())
            while offset_range_tracker.try_claim(position):
                try:
                    line = handle.readline()
                except DamagedFile as err:
                    yield (
                        file_name,
                        position,
                        Unreadable(f"{err}; the records from this offset on are lost", damaged_file=True),
                    )
                    break
                if not line or (position == 0 and line == UTF8_BOM):  # a BOM alone: an empty file
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


# ---------------------------------------------------------------------------------------------
# Parsing: raw record -> Document, or the reason it cannot be one.


class RejectedRecord(ValueError):
    """Why a record cannot be a document; the message never quotes the record."""


class JsonLine(NamedTuple):
    """A JSONL record without its text field's value: the line before and after it, verbatim."""

    prefix: str
    suffix: str


def _reject_constant(name: str):
    raise RejectedRecord(f"{name} is not valid JSON (RFC 8259 has no NaN or Infinity); write it as a string or null")


# The scanner validates every value but keeps numbers as their text (no int digit limit, no
# float overflow to inf) and builds no nested objects: only the text field's value is used.
_SCAN = json.JSONDecoder(
    parse_int=str, parse_float=str, parse_constant=_reject_constant, object_pairs_hook=lambda pairs: None
).scan_once
_WS = re.compile(r"[ \t\n\r]*")
_COLON = re.compile(r"[ \t\n\r]*:[ \t\n\r]*")
_SEPARATOR = re.compile(r"[ \t\n\r]*(?:(,)[ \t\n\r]*|\})")
_JSON_KIND = {'"': "a string", "{": "an object", "[": "an array", "t": "true", "f": "false", "n": "null"}
_PYTHON_KIND = {"{": "dict", "[": "list", "t": "bool", "f": "bool", "n": "NoneType"}
_INT = re.compile(r"-?\d+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_line(line: str, text_field: str) -> tuple[str, JsonLine]:
    """(the text field's value, the rest of the line) of one JSONL record; RejectedRecord saying
    why not (invalid JSON, not an object, no text field or a duplicated one, text not a string)."""
    try:
        return _parse_json_line(line, text_field)
    except RejectedRecord:
        raise
    except json.JSONDecodeError as err:
        raise RejectedRecord(f"invalid JSON ({err.msg}: column {err.colno})") from None
    except RecursionError:
        raise RejectedRecord("JSON nested too deeply to parse") from None


def _parse_json_line(line: str, text_field: str) -> tuple[str, JsonLine]:
    first = pos = _skip(line, 0)
    if pos == len(line):
        raise RejectedRecord("blank line (no JSON value)")
    if line[pos] != "{":
        _expect_end(line, _skip(line, _value(line, pos)[1]))
        raise RejectedRecord(f"JSON value is {_JSON_KIND.get(line[first], 'a number')}, not an object")
    found = None
    pos = _skip(line, pos + 1)
    if line.startswith("}", pos):
        pos += 1
    else:
        while True:
            if not line.startswith('"', pos):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", line, pos)
            key, pos = json.decoder.scanstring(line, pos + 1)
            colon = _COLON.match(line, pos)
            if colon is None:
                raise json.JSONDecodeError("Expecting ':' delimiter", line, _skip(line, pos))
            start = colon.end()
            value, pos = _value(line, start)
            if key == text_field:
                if found is not None:  # the copy left unperturbed would carry the raw text out
                    raise RejectedRecord(f"text field {text_field!r} appears more than once in the object")
                found = (value, start, pos)
            separator = _SEPARATOR.match(line, pos)
            if separator is None:
                raise json.JSONDecodeError("Expecting ',' delimiter", line, _skip(line, pos))
            pos = separator.end()
            if separator.group(1) is None:  # the closing brace
                break
    _expect_end(line, _skip(line, pos))
    if found is None:
        raise RejectedRecord(f"missing text field {text_field!r}")
    value, start, end = found
    if line[start] != '"':  # named as Python (and the Parquet path) names it
        kind = _PYTHON_KIND.get(line[start]) or ("int" if _INT.fullmatch(line, start, end) else "float")
        raise RejectedRecord(f"text field {text_field!r} is a {kind}, not a string")
    return value, JsonLine(line[:start], line[end:])


def _skip(line: str, pos: int) -> int:
    return _WS.match(line, pos).end()


def _value(line: str, pos: int):
    try:
        return _SCAN(line, pos)
    except StopIteration:
        raise json.JSONDecodeError("Expecting value", line, pos) from None


def _expect_end(line: str, pos: int) -> None:
    if pos != len(line):
        raise json.JSONDecodeError("Extra data", line, pos)


class ParseRecordFn(beam.DoFn):
    """Raw line -> Document, or a dead-letter record saying why (never the text).

    A UTF-8 byte order mark at the start of a file is dropped (in JSONL at the start of any line,
    where only concatenated files put one; RFC 8259 lets parsers ignore it).
    """

    def __init__(self, fmt: str, text_field: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        self.fmt, self.text_field = fmt, text_field
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_lettered")
        self._damaged = Metrics.counter(METRICS_NAMESPACE, "damaged_files")
        self._surrogates = Metrics.counter(METRICS_NAMESPACE, "bad_surrogates")

    def process(self, element):
        source, offset, raw = element
        if isinstance(raw, Unreadable):
            if raw.damaged_file:
                self._damaged.inc()
                logging.warning(
                    "dptext: input file %s is damaged at decompressed byte %d: %s", source, offset, raw.reason
                )
            yield self._reject(source, offset, raw.reason)
            return
        if self.fmt == "parquet":
            yield self._document(source, offset, raw)
            return
        if raw.startswith(UTF8_BOM) and (offset == 0 or self.fmt == "jsonl"):
            raw = raw[len(UTF8_BOM) :]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield self._reject(source, offset, f"not UTF-8 (invalid byte at record byte {err.start})")
            return
        if self.fmt == "text":
            yield Document(source, offset, line)
            return
        try:
            text, rest = parse_json_line(line, self.text_field)
        except RejectedRecord as err:
            yield self._reject(source, offset, str(err))
            return
        text, replaced = _SURROGATE.subn("\ufffd", text)
        if replaced:
            self._surrogates.inc(replaced)
        yield Document(source, offset, text, rest)

    def _document(self, source, offset, record: dict):
        """A Document from a Parquet row, or the dead-letter record saying why not."""
        problem = text_field_problem(record, self.text_field)
        if problem:
            return self._reject(source, offset, problem)
        return Document(source, offset, record[self.text_field], record)

    def _reject(self, source, offset, reason):
        self._dead.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(source, offset, reason))


# ---------------------------------------------------------------------------------------------
# Writing.


_ENCODE = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # built once: json.dumps builds one a call


def json_text(value) -> str:
    """JSON of a value with non-ASCII as UTF-8, and any lone surrogate as its \\u escape, so the
    result always encodes as UTF-8 (Python strings can hold them; UTF-8 cannot)."""
    return _SURROGATE.sub(_escape_surrogate, _ENCODE(value))


def _escape_surrogate(match) -> str:
    return f"\\u{ord(match.group()):04x}"


def format_document(doc: Document, fmt: str, text_field: str):
    """A perturbed document in its input's format: a text line, a JSON line (the input line with
    its text field's value replaced), or a Parquet row."""
    if fmt == "text":
        return doc.text
    if fmt == "jsonl":
        return doc.record.prefix + json_text(doc.text) + doc.record.suffix
    record = dict(doc.record)
    record[text_field] = doc.text
    return record


class WriteDocuments(beam.PTransform):
    def __init__(self, prefix: str, fmt: str, text_field: str, parquet_schema=None):
        super().__init__()
        self.prefix, self.fmt, self.text_field, self.parquet_schema = prefix, fmt, text_field, parquet_schema

    def expand(self, documents):
        formatted = documents | "Format" >> beam.Map(format_document, self.fmt, self.text_field)
        if self.fmt == "parquet":  # every column keeps the input's type
            return formatted | "Write" >> beam.io.WriteToParquet(
                self.prefix, self.parquet_schema, file_name_suffix=SUFFIX[self.fmt]
            )
        return formatted | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=SUFFIX[self.fmt])


class WriteDeadLetter(beam.PTransform):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, records):
        return (
            records
            | "Format" >> beam.Map(json_text)
            | "Write" >> beam.io.WriteToText(dead_letter_prefix(self.prefix), file_name_suffix=".jsonl")
        )


def dead_letter_prefix(prefix: str) -> str:
    return prefix + ".dead_letter"


def write_text_file(path: str, content: str) -> None:
    """Write one small file on any Beam filesystem (local or gs://)."""
    with FileSystems.create(path) as handle:
        handle.write(content.encode("utf-8"))
