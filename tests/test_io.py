"""The line source: every line exactly once, with its byte offset, however the file is split."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from apache_beam.io import source_test_utils

from pipeline.io import _LineSource, detect_format

LINES = [b"first line", b"", b"caf\xc3\xa9 \xe2\x80\xa8 unicode", b"\xff\xfe not utf-8", b"x" * 300,
         b"crlf line\r", b"last line without newline"]


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
        assert blob[offset:offset + len(line)] == line


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


def _parquet(path, table, row_group_size):
    import pyarrow.parquet as pq

    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_rows_have_their_row_number_however_split(tmp_path):
    import pyarrow as pa

    from pipeline.io import _ParquetRowSource

    path = tmp_path / "c.parquet"
    _parquet(path, pa.table({"id": list(range(50)), "text": [f"row {i}" for i in range(50)]}), row_group_size=7)
    source = _ParquetRowSource(str(path))
    records = source_test_utils.read_from_source(source)
    assert sorted((r[1], r[2]["id"]) for r in records) == [(i, i) for i in range(50)]
    splits = [(s.source, s.start_position, s.stop_position) for s in source.split(desired_bundle_size=64)]
    assert len(splits) > 1
    source_test_utils.assert_sources_equal_reference_source((source, None, None), splits)
