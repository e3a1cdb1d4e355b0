"""The line source: every line exactly once, with its byte offset, however the file is split."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from apache_beam.io import source_test_utils

from dptext.pipeline.io import _LineSource, detect_format

LINES = [
    b"first line",
    b"",
    b"caf\xc3\xa9 \xe2\x80\xa8 unicode",
    b"\xff\xfe not utf-8",
    b"x" * 300,
    b"crlf line\r",
    b"last line without newline",
]


def _write(path, lines, trailing_newline=False):
    blob = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    path.write_bytes(blob)
    return blob


def _expected(path, lines):
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    return [(str(path), o, line) for o, line in zip(offsets, lines)]


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_reads_every_line_with_its_offset(tmp_path, trailing_newline):
    path = tmp_path / "c.txt"
    blob = _write(path, LINES, trailing_newline)
    records = source_test_utils.read_from_source(_LineSource(str(path)))
    assert sorted(records) == sorted(_expected(path, LINES))
    for _, offset, line in records:
        assert blob[offset : offset + len(line)] == line


def test_splits_read_every_line_exactly_once(tmp_path):
    path = tmp_path / "c.txt"
    _write(path, LINES * 5, trailing_newline=True)
    source = _LineSource(str(path))
    for bundle in (1, 7, 64, 333):
        splits = [(s.source, s.start_position, s.stop_position) for s in source.split(desired_bundle_size=bundle)]
        assert len(splits) > 1
        source_test_utils.assert_sources_equal_reference_source((source, None, None), splits)


def test_initial_splits_are_equal_within_each_file(tmp_path):
    """Not Beam's desired-size pieces plus a remainder (which a runner dealing splits out in turn
    gives all to one worker): every file cut into pieces of one size, +-1 byte."""
    for name, copies in (("a.txt", 5), ("b.txt", 13)):
        _write(tmp_path / name, LINES * copies, trailing_newline=True)
    source = _LineSource(str(tmp_path / "*.txt"))
    desired = 100
    by_file = {}
    for s in source.split(desired_bundle_size=desired):
        by_file.setdefault(s.source._file_name, []).append(s.stop_position - s.start_position)
    for name, sizes in by_file.items():
        total = Path(name).stat().st_size
        assert sum(sizes) == total and len(sizes) == -(-total // desired)
        assert max(sizes) - min(sizes) <= 1, sizes
    splits = [(s.source, s.start_position, s.stop_position) for s in source.split(desired_bundle_size=desired)]
    source_test_utils.assert_sources_equal_reference_source((source, None, None), splits)


def test_dynamic_splitting_at_every_fraction(tmp_path):
    path = tmp_path / "c.txt"
    _write(path, LINES, trailing_newline=True)
    source_test_utils.assert_split_at_fraction_exhaustive(_LineSource(str(path)))


def test_gzip_is_read_whole(tmp_path):
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b"\n".join(LINES) + b"\n"))
    records = source_test_utils.read_from_source(_LineSource(str(path)))
    assert [r[2] for r in sorted(records, key=lambda r: r[1])] == LINES


def test_format_detection():
    assert detect_format("a/*.jsonl") == "jsonl" and detect_format("x.json.gz") == "jsonl"
    assert detect_format("corpus-*.txt") == "text" and detect_format("data") == "text"
    # Every compression Beam reads, any case: the format is the name's before the compression suffix.
    for name in (
        "x.jsonl.bz2",
        "x.jsonl.gz",
        "x.json.gz",
        "x.ndjson.zst",
        "x.ndjson.zstd",
        "x.jsonl.xz",
        "x.jsonl.lzma",
        "x.jsonl.deflate",
        "X.JSONL.GZ",
    ):
        assert detect_format(name) == "jsonl", name
    assert detect_format("x.txt.gz") == "text" and detect_format("x.gz") == "text"
    assert detect_format("x.parquet") == "parquet"


def _compressors():
    import bz2
    import lzma
    import zlib

    import zstandard

    return {
        "gz": gzip.compress,
        "bz2": bz2.compress,
        "xz": lzma.compress,
        "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
        "zst": lambda b: zstandard.ZstdCompressor().compress(b),
        "deflate": zlib.compress,
    }


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz", "lzma", "zst", "deflate"])
def test_every_compression_is_read_whole_even_concatenated(tmp_path, suffix):
    compress = _compressors()[suffix]
    blob = b"\n".join(LINES) + b"\n"
    path = tmp_path / f"c.txt.{suffix}"
    path.write_bytes(compress(blob) + compress(blob))  # two streams, one after the other (cat a b)
    records = sorted(source_test_utils.read_from_source(_LineSource(str(path))), key=lambda r: r[1])
    assert [r[2] for r in records] == LINES * 2
    assert [r[1] for r in records] == [o for _, o, _ in _expected(path, LINES * 2)]


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz", "zst", "deflate"])
def test_a_truncated_compressed_file_ends_with_an_unreadable_record(tmp_path, suffix):
    """Beam's reader took a file ending inside a stream for a clean end: its tail was lost unsaid."""
    from dptext.pipeline.io import Unreadable

    lines = [b"line %d " % i + b"x" * (i % 50) for i in range(3000)]
    blob = b"\n".join(lines) + b"\n"
    compressed = _compressors()[suffix](blob)
    path = tmp_path / f"c.txt.{suffix}"
    path.write_bytes(compressed[: len(compressed) // 2])
    records = sorted(source_test_utils.read_from_source(_LineSource(str(path))), key=lambda r: r[1])
    *good, (source, offset, last) = records
    assert source == str(path) and isinstance(last, Unreadable) and last.damaged_file
    assert "file is truncated: it ends inside a compressed stream" in last.reason
    assert [r[2] for r in good] == lines[: len(good)] and offset == sum(len(line) + 1 for line in lines[: len(good)])
    if suffix not in ("bz2", "zst"):  # these give nothing before a whole block (900 kB, 128 kB)
        assert len(good) > 100


def test_corrupt_compressed_data_ends_with_an_unreadable_record(tmp_path):
    from dptext.pipeline.io import Unreadable

    blob = bytearray(gzip.compress(b"\n".join(LINES * 2000) + b"\n"))
    blob[len(blob) // 2 : len(blob) // 2 + 100] = b"\xff" * 100
    path = tmp_path / "c.txt.gz"
    path.write_bytes(bytes(blob))
    *good, (_, _, last) = sorted(source_test_utils.read_from_source(_LineSource(str(path))), key=lambda r: r[1])
    assert isinstance(last, Unreadable) and last.reason.startswith("gzip data is corrupt (Error -3 while")
    assert [r[2] for r in good] == (LINES * 2000)[: len(good)]


def test_io_errors_of_the_underlying_file_are_not_taken_for_damage(tmp_path):
    """A network error must fail the read (the runner retries it), not become a dead letter."""
    import io

    from dptext.pipeline.io import _DecompressedReader

    class Flaky(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 100:
                raise ConnectionResetError("network")
            return super().read(min(n, 50))

    reader = io.BufferedReader(_DecompressedReader(Flaky(gzip.compress(bytes(range(256)) * 400)), "gzip"))
    with pytest.raises(ConnectionResetError):
        reader.read()


@pytest.mark.parametrize(
    "line, reason",
    [
        ("", "blank line (no JSON value)"),
        (" \t\r", "blank line (no JSON value)"),
        ("null", "JSON value is null, not an object"),
        ("[1, 2]", "JSON value is an array, not an object"),
        ('"text"', "JSON value is a string, not an object"),
        ("-1.5e3", "JSON value is a number, not an object"),
        ("true", "JSON value is true, not an object"),
        ("{} {}", "invalid JSON (Extra data: column 4)"),
        ('{"text": "a",}', "invalid JSON (Expecting property name enclosed in double quotes: column 14)"),
        ('{"text" "a"}', "invalid JSON (Expecting ':' delimiter: column 9)"),
        ('{"text": "a" "b"}', "invalid JSON (Expecting ',' delimiter: column 14)"),
        ('{"text": }', "invalid JSON (Expecting value: column 10)"),
        ('{"text": "unterminated', "invalid JSON (Unterminated string starting at: column 10)"),
        ('{"text": "a\tb"}', "invalid JSON (Invalid control character at: column 12)"),
        ('{"id": 1}', "missing text field 'text'"),
        ('{"text": 42}', "text field 'text' is a int, not a string"),
        ('{"text": -4.2e1}', "text field 'text' is a float, not a string"),
        ('{"text": null}', "text field 'text' is a NoneType, not a string"),
        ('{"text": ["a"]}', "text field 'text' is a list, not a string"),
        ('{"text": "a", "t\\u0065xt": "b"}', "text field 'text' appears more than once in the object"),
        (
            '{"x": NaN, "text": "a"}',
            "NaN is not valid JSON (RFC 8259 has no NaN or Infinity); write it as a string or null",
        ),
        ('{"x": -Infinity, "text": "a"}', "-Infinity is not valid JSON"),
        ('{"x": ' + "[" * 5000 + "]" * 5000 + ', "text": "a"}', "JSON nested too deeply to parse"),
        ('{"x": ' + '{"a":' * 5000, "JSON nested too deeply to parse"),
    ],
)
def test_json_lines_that_are_not_documents_say_why(line, reason):
    from dptext.pipeline.io import RejectedRecord, parse_json_line

    with pytest.raises(RejectedRecord) as err:
        parse_json_line(line, "text")
    assert str(err.value).startswith(reason)


def test_a_json_line_is_its_text_field_and_the_rest_verbatim():
    from dptext.pipeline.io import JsonLine, format_document, parse_json_line
    from dptext.transforms.beam import Document

    line = '{"id": 1e400, "big": ' + "9" * 5000 + ', "text" : "caf\\u00e9 \\ud83d", "n": [1.10, -0.0, {"text": 1}]}\r'
    text, rest = parse_json_line(line, "text")
    assert text == "caf\u00e9 \ud83d" and rest == JsonLine(line[: line.index('"caf')], line[line.index(', "n"') :])
    assert format_document(Document("f", 0, "new", rest), "jsonl", "text") == line.replace(
        '"caf\\u00e9 \\ud83d"', '"new"'
    )


def _parquet(path, table, row_group_size):
    import pyarrow.parquet as pq

    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_rows_have_their_row_number_however_split(tmp_path):
    import pyarrow as pa

    from dptext.pipeline.io import _ParquetRowSource

    path = tmp_path / "c.parquet"
    _parquet(path, pa.table({"id": list(range(50)), "text": [f"row {i}" for i in range(50)]}), row_group_size=7)
    source = _ParquetRowSource(str(path))
    records = source_test_utils.read_from_source(source)
    assert sorted((r[1], r[2]["id"]) for r in records) == [(i, i) for i in range(50)]
    splits = [(s.source, s.start_position, s.stop_position) for s in source.split(desired_bundle_size=64)]
    assert len(splits) > 1
    source_test_utils.assert_sources_equal_reference_source((source, None, None), splits)
