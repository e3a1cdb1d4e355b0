"""Issue #12 ("Trust"): each input defect reproduced end to end through `dptext run`.

Every record comes out once (a document or a dead-letter record with its reason); a user's mistake
is one line on stderr with exit 2, naming the file; the outputs are UTF-8 and RFC 8259 JSON.
Most runs use the identity mechanism (multivariate_laplace at epsilon 1e9 keeps every word, see
test_pipeline), so an output line can be compared with its input byte for byte.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from dptext.pipeline.cli import main
from dptext.transforms.index import EmbeddingIndex
from dptext.transforms.mechanisms.truncated_gumbel import smallest_feasible_epsilon
from tests.conftest import build_words_index, shard_lines

WORDS = "the cat sat on a mat and dog ran to park hello world good bad day night".split()
CANARY = "zebracorn"  # out of the vocabulary: may appear in no dead letter, report, log or error
IDENTITY = (
    "--epsilon",
    "1e9",
    "--mechanism",
    "multivariate_laplace",
    "--search",
    "exact",
    "--oov",
    "keep",
    "--test-seed",
    "1",
)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    build_words_index(out, WORDS, d=6, neighbours=8, seed=7)
    return out


def dptext_run(index_dir, inputs, output, *options) -> int:
    return main(
        [
            "run",
            "--input",
            str(inputs),
            "--output",
            str(output),
            "--index",
            str(index_dir),
            "--runner",
            "DirectRunner",
            *(options or IDENTITY),
        ]
    )


def outputs(output) -> tuple[list[str], list[dict], dict]:
    """(document lines, dead-letter records, JSON report) of a finished run; every file strict UTF-8."""
    lines = shard_lines(f"{output}-*")
    dead = [json.loads(line) for line in shard_lines(f"{output}.dead_letter-*")]
    report = json.loads(Path(f"{output}.privacy_report.json").read_text("utf-8"))
    return lines, dead, report


def strict_json(line: str):
    """RFC 8259: no NaN, Infinity or -Infinity (Python's json accepts them)."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse, parse_int=str, parse_float=str)


def one_line_error(capfd) -> str:
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dptext run: error: ")
    return err


# --- 2. lone surrogates ----------------------------------------------------------------------


def test_lone_surrogates_neither_kill_the_job_nor_change_pass_through_fields(index_dir, tmp_path):
    lines = [
        '{"id":1,"text":"broken emoji \\ud83d"}',  # a truncated tweet
        '{"id":2,"note":"half \\udc00 pair","text":"the cat"}',  # in a field that rides along
        '{"\\ud83d":3,"text":"the dog"}',  # in a key
        '{"id":4,"text":"a pair \\ud83d\\ude00 is fine"}',
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert dptext_run(index_dir, tmp_path / "c.jsonl", tmp_path / "o" / "c") == 0
    out, dead, report = outputs(tmp_path / "o" / "c")
    assert dead == [] and sorted(out) == sorted(
        [
            '{"id":1,"text":"broken emoji \ufffd"}',  # not a character: U+FFFD in the text
            lines[1],
            lines[2],  # elsewhere the escape is carried through verbatim
            '{"id":4,"text":"a pair \U0001f600 is fine"}',
        ]
    )
    assert report["metrics"]["bad_surrogates"] == 1


# --- 3. damaged compressed files -------------------------------------------------------------


def _tweets(n: int, first: int = 0) -> bytes:
    rng = np.random.default_rng(first)
    return b"".join(
        json.dumps({"id": i, "label": "pos", "text": " ".join(rng.choice(WORDS, 12)) + f" {CANARY}"}).encode() + b"\n"
        for i in range(first, first + n)
    )


def _readable_prefix(blob: bytes, kind: str) -> bytes:
    """What a decompressor gives of a truncated file before it runs out of input."""
    d = {"gz": zlib.decompressobj(zlib.MAX_WBITS | 16), "bz2": bz2.BZ2Decompressor(), "xz": lzma.LZMADecompressor()}[
        kind
    ]
    return d.decompress(blob)


@pytest.mark.parametrize(
    "kind, compress", [("gz", gzip.compress), ("bz2", lambda b: bz2.compress(b, 1)), ("xz", lzma.compress)]
)
def test_truncated_compressed_file_is_named_and_dead_lettered(index_dir, tmp_path, caplog, capfd, kind, compress):
    # bzip2 decompresses whole blocks (100 kB at level 1): 3,000 records make the first readable.
    full = compress(_tweets(3000))
    damaged = tmp_path / f"t.jsonl.{kind}"
    damaged.write_bytes(full[: len(full) * 2 // 5])
    readable = _readable_prefix(damaged.read_bytes(), kind)
    complete = readable[: readable.rfind(b"\n") + 1]
    with caplog.at_level(logging.WARNING):
        assert dptext_run(index_dir, damaged, tmp_path / "o" / "c") == 0
    out, dead, report = outputs(tmp_path / "o" / "c")
    assert len(out) == complete.count(b"\n") > 0
    assert dead == [
        {
            "source": str(damaged),
            "offset": len(complete),
            "reason": f"{ {'gz': 'gzip', 'bz2': 'bzip2', 'xz': 'xz/lzma'}[kind] } file is truncated: it "
            "ends inside a compressed stream; the records from this offset on are lost",
        }
    ]
    assert report["metrics"]["damaged_files"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "damaged" in r.getMessage()]
    assert len(warnings) == 1 and str(damaged) in warnings[0]
    assert CANARY not in capfd.readouterr().err + "".join(r.getMessage() for r in caplog.records)


def test_corrupt_gzip_data_is_named_and_dead_lettered(index_dir, tmp_path):
    blob = bytearray(gzip.compress(_tweets(300)))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)  # a damaged block in the middle
    damaged = tmp_path / "c.jsonl.gz"
    damaged.write_bytes(bytes(blob))
    assert dptext_run(index_dir, damaged, tmp_path / "o" / "c") == 0
    out, dead, report = outputs(tmp_path / "o" / "c")
    (record,) = dead
    assert record["reason"].startswith("gzip data is corrupt (")
    assert record["reason"].endswith("; the records from this offset on are lost")
    assert len(out) == _tweets(300)[: record["offset"]].count(b"\n") and report["metrics"]["damaged_files"] == 1


def test_concatenated_and_zero_padded_gzip_are_read_whole(index_dir, tmp_path):
    """Not damage: gzip members one after another (cat a.gz b.gz), zero padding after the last."""
    blob = _tweets(30)
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(blob[:1000]) + gzip.compress(blob[1000:]) + bytes(512))
    assert dptext_run(index_dir, path, tmp_path / "o" / "c") == 0
    out, dead, report = outputs(tmp_path / "o" / "c")
    assert sorted(out) == sorted(blob.decode().splitlines()) and dead == []
    assert report["metrics"].get("damaged_files", 0) == 0


# --- 4. valid JSON that crashed the parser ---------------------------------------------------


def test_deep_nesting_is_dead_lettered_and_huge_integers_pass_through(index_dir, tmp_path):
    deep = '{"id":1,"text":"the cat","x":' + "[" * 1000 + "]" * 1000 + "}"
    huge = '{"id":2,"text":"the dog","x":' + "7" * 5000 + "}"
    (tmp_path / "c.jsonl").write_text(deep + "\n" + huge + "\n", encoding="utf-8")
    assert dptext_run(index_dir, tmp_path / "c.jsonl", tmp_path / "o" / "c") == 0
    out, dead, _ = outputs(tmp_path / "o" / "c")
    assert out == [huge]  # valid JSON (RFC 8259 sets no limit), kept as written
    assert dead == [{"source": str(tmp_path / "c.jsonl"), "offset": 0, "reason": "JSON nested too deeply to parse"}]


# --- 8. format and compression per file ------------------------------------------------------


def test_format_and_compression_are_detected_per_file(index_dir, tmp_path):
    """Keys, ids and labels of compressed JSONL files (any of the patterns that used to be read as
    text) come out intact, with the real mechanism perturbing only the text."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.jsonl").write_bytes(_tweets(5))
    (d / "b.jsonl.gz").write_bytes(gzip.compress(_tweets(5, 5)))
    (d / "c.ndjson.bz2").write_bytes(bz2.compress(_tweets(5, 10)))
    (d / "e.json.xz").write_bytes(lzma.compress(_tweets(5, 15)))
    index = EmbeddingIndex.load(index_dir)
    epsilon = str(1.5 * smallest_feasible_epsilon(index.n, index.dmin))
    for n, pattern in enumerate((d / "*", d / "*.jsonl*", d / "c.ndjson.bz2")):
        assert dptext_run(index_dir, pattern, tmp_path / f"o{n}" / "c", "--epsilon", epsilon) == 0
        out, dead, _ = outputs(tmp_path / f"o{n}" / "c")
        records = [strict_json(line) for line in out]
        assert (
            dead == [] and records and all(set(r) == {"id", "label", "text"} and r["label"] == "pos" for r in records)
        )
        assert all(CANARY not in r["text"] for r in records)
    assert sorted(r["id"] for r in records) == ["10", "11", "12", "13", "14"]


def test_files_that_disagree_on_the_format_are_refused_naming_two(index_dir, tmp_path, capfd):
    (tmp_path / "a.jsonl").write_bytes(_tweets(3))
    (tmp_path / "README").write_text("the cat\n", encoding="utf-8")
    assert dptext_run(index_dir, tmp_path / "*", tmp_path / "o" / "c") == 2
    err = one_line_error(capfd)
    assert str(tmp_path / "a.jsonl") in err and str(tmp_path / "README") in err and "--format" in err
    assert dptext_run(index_dir, tmp_path / "*", tmp_path / "o" / "c", *IDENTITY, "--format", "text") == 0


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("part-00000", _tweets(3), "its first line is a JSON object; pass --format jsonl"),
        (
            "c.jsonl",
            gzip.compress(_tweets(3)),
            "is gzip-compressed but its name does not say so; add the suffix of its compression (c.jsonl.gz)",
        ),
        ("c.txt", bz2.compress(b"the cat\n"), "is bzip2-compressed but its name does not say so"),
        ("c.txt", "the cat\n".encode("utf-16"), "starts with a UTF-16 byte order mark; dptext reads UTF-8"),
        ("c.jsonl", None, "is a Parquet file (it starts with PAR1) but its name does not end in .parquet"),
        ("c.parquet.gz", "gzip", "a compressed Parquet file is not supported"),
        (
            "c.json",
            json.dumps([{"id": 1, "text": "the cat"}], indent=2).encode(),
            "is one JSON document over many lines (its first line opens it); dptext reads JSON lines",
        ),
    ],
)
def test_a_file_whose_content_contradicts_its_name_is_refused(index_dir, tmp_path, capfd, name, content, message):
    if content in (None, "gzip"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": ["the cat"]}), tmp_path / "p.parquet")
        content = (tmp_path / "p.parquet").read_bytes()
        content = gzip.compress(content) if name.endswith(".gz") else content
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(content)
    assert dptext_run(index_dir, tmp_path / "in" / name, tmp_path / "o" / "c") == 2
    err = one_line_error(capfd)
    assert f"{tmp_path / 'in' / name}: " in err and message in err


# --- 10. tracebacks for plain mistakes -------------------------------------------------------


def test_a_directory_as_input_is_one_line_suggesting_a_glob(index_dir, tmp_path, capfd):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("the cat\n", encoding="utf-8")
    assert dptext_run(index_dir, tmp_path / "d", tmp_path / "o" / "c") == 2
    assert (
        f"--input {tmp_path / 'd'} is a directory; read the files in it with a glob such as "
        f"{tmp_path / 'd' / '*'}" in one_line_error(capfd)
    )


def test_a_file_name_that_is_not_utf8_is_one_line_naming_it(index_dir, tmp_path, capfd):
    """Beam carries options and file names as UTF-8: such a name used to fail inside the job."""
    (tmp_path / os.fsdecode(b"bad\xffname.jsonl")).write_bytes(_tweets(2))
    for pattern in (tmp_path / "*.jsonl", tmp_path / os.fsdecode(b"bad\xffname.jsonl")):
        assert dptext_run(index_dir, pattern, tmp_path / "o" / "c") == 2
        assert f"{tmp_path}/bad\\xffname.jsonl: this file name is not UTF-8" in one_line_error(capfd)


def test_a_gz_input_that_is_not_gzip_is_one_line_naming_it(index_dir, tmp_path, capfd):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(_tweets(5))
    assert dptext_run(index_dir, path, tmp_path / "o" / "c") == 2
    err = one_line_error(capfd)
    assert f"{path}: not gzip data, though its name says so" in err and CANARY not in err


def test_a_corrupt_parquet_file_among_several_is_one_line_naming_it(index_dir, tmp_path, capfd):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("a", "b"):
        pq.write_table(pa.table({"id": [1, 2], "text": ["the cat", "a dog"]}), tmp_path / f"{name}.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 this is not a parquet file " + CANARY.encode())
    assert dptext_run(index_dir, tmp_path / "*.parquet", tmp_path / "o" / "c") == 2
    err = one_line_error(capfd)
    assert f"{tmp_path / 'c.parquet'}: not a readable Parquet file" in err and CANARY not in err


def test_a_parquet_row_group_that_cannot_be_read_is_one_line_naming_the_file(index_dir, tmp_path, capfd):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"id": list(range(3000)), "text": [f"the cat {i}" for i in range(3000)]}),
        path,
        row_group_size=1000,
        compression="snappy",
    )
    blob = bytearray(path.read_bytes())
    blob[2000:6000] = bytes(b ^ 0x55 for b in blob[2000:6000])  # the first row group's pages
    path.write_bytes(bytes(blob))
    assert dptext_run(index_dir, path, tmp_path / "o" / "c") == 2
    assert f"{path}: row group 0 cannot be read" in one_line_error(capfd)


def test_a_parquet_string_that_is_not_utf8_is_dead_lettered(index_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(UnicodeEncodeError):  # a lone surrogate cannot even reach a Parquet string...
        pa.array(["broken \ud83d"])
    # ...but bytes that are not UTF-8 can: Arrow's writer does not validate them, nor do others.
    text = pa.Array.from_buffers(
        pa.string(),
        2,
        [None, pa.py_buffer(np.array([0, 3, 10], np.int32).tobytes()), pa.py_buffer(b"\xed\xa0\xbdthe cat")],
    )
    pq.write_table(pa.table({"id": [1, 2], "text": text}), tmp_path / "c.parquet")
    assert dptext_run(index_dir, tmp_path / "c.parquet", tmp_path / "o" / "c") == 0
    import glob

    written = pq.read_table(glob.glob(str(tmp_path / "o" / "c-*.parquet"))).to_pylist()
    assert written == [{"id": 2, "text": "the cat"}]
    (dead,) = [json.loads(line) for line in shard_lines(str(tmp_path / "o" / "c.dead_letter-*"))]
    assert dead == {
        "source": str(tmp_path / "c.parquet"),
        "offset": 0,
        "reason": "column 'text' holds a string that is not UTF-8",
    }


# --- 11. numbers as written; RFC 8259 output -------------------------------------------------


def test_pass_through_fields_come_out_byte_for_byte(index_dir, tmp_path):
    lines = [
        '{"id":1,"x":1e400,"y":1.10,"z":-0.0,"big":123456789012345678901234567890,"e":1E+2,"text":"the cat"}',
        '{ "text" : "the dog" , "b":[1.50, {"k":"caf\\u00e9 \\/ \\"q\\""}], "id" : 2 }',
        '{"id":3,"id":4,"text":"hello world"}',  # a duplicated key that is not the text
        '{"text":"good day","id":5,"n":null,"t":true,"f":false,"s":"\\u2028"}\r',
    ]  # CRLF line
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert dptext_run(index_dir, tmp_path / "c.jsonl", tmp_path / "o" / "c") == 0
    out, dead, _ = outputs(tmp_path / "o" / "c")
    assert sorted(out) == sorted(lines) and dead == []


def test_nan_and_infinity_are_dead_lettered_and_outputs_are_rfc8259(index_dir, tmp_path):
    lines = [
        '{"id":1,"x":NaN,"text":"the cat"}',
        '{"id":2,"x":[Infinity],"text":"the cat"}',
        '{"id":3,"x":-Infinity,"text":"the cat"}',
        '{"id":4,"x":1e999,"text":"the cat"}',
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert dptext_run(index_dir, tmp_path / "c.jsonl", tmp_path / "o" / "c") == 0
    out, dead, _ = outputs(tmp_path / "o" / "c")
    assert out == [lines[3]] and strict_json(out[0])["x"] == "1e999"
    assert sorted(d["reason"].split(" is not")[0] for d in dead) == ["-Infinity", "Infinity", "NaN"]
    assert all("is not valid JSON (RFC 8259 has no NaN or Infinity)" in d["reason"] for d in dead)


# --- found while being a hostile user --------------------------------------------------------


def test_bom_crlf_blank_null_and_duplicate_text_field(index_dir, tmp_path, capfd):
    blob = (
        b'\xef\xbb\xbf{"id":1,"text":"the cat"}\r\n'  # a byte order mark opens the file
        b"\n"
        b"null\n"
        b'{"id":4,"text":"the dog","text":"' + CANARY.encode() + b'"}\n'
        b'\xef\xbb\xbf{"id":5,"text":"a mat"}'
    )  # a second file's BOM after `cat`, no final newline
    (tmp_path / "c.jsonl").write_bytes(blob)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "newline.jsonl").write_bytes(b"\n")
    assert dptext_run(index_dir, tmp_path / "*.jsonl", tmp_path / "o" / "c") == 0
    out, dead, report = outputs(tmp_path / "o" / "c")
    assert sorted(out) == ['{"id":1,"text":"the cat"}\r', '{"id":5,"text":"a mat"}']
    reasons = {(Path(d["source"]).name, d["offset"]): d["reason"] for d in dead}
    assert reasons == {
        ("c.jsonl", 30): "blank line (no JSON value)",
        ("c.jsonl", 31): "JSON value is null, not an object",
        ("c.jsonl", 36): "text field 'text' appears more than once in the object",
        ("newline.jsonl", 0): "blank line (no JSON value)",
    }
    assert CANARY not in json.dumps(report) + capfd.readouterr().err


def test_a_text_file_drops_its_bom_and_keeps_crs(index_dir, tmp_path):
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfthe cat\r\nold mac\rline\n\xef\xbb\xbfa dog")
    assert dptext_run(index_dir, tmp_path / "c.txt", tmp_path / "o" / "c") == 0
    out, dead, _ = outputs(tmp_path / "o" / "c")
    assert sorted(out) == sorted(["the cat\r", "old mac\rline", "\ufeffa dog"]) and dead == []


def test_very_long_lines(index_dir, tmp_path):
    text = "the cat sat on the mat " * 200_000  # 4.6 MB in one JSON line, split into chunks
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"id": 1, "text": text}) + "\n" + '{"id":2,"text":"a dog"}\n', encoding="utf-8"
    )
    assert dptext_run(index_dir, tmp_path / "c.jsonl", tmp_path / "o" / "c") == 0
    out, dead, _ = outputs(tmp_path / "o" / "c")
    assert dead == [] and sorted(strict_json(line)["text"] for line in out) == sorted(["a dog", text])
