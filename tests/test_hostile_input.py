"""Hostile input, generated: every record comes out once, pass-through fields unchanged, no input
text outside the documents, and a mistake is one line with exit 2.

Two layers, both property-based (hypothesis):
- the reader and the parser alone (`_LineSource`, `ParseRecordFn`, `format_document`, `_rows`):
  fast, so many examples; each is checked against an independent oracle (Python's json module,
  the stdlib decompressors);
- the whole job through `dptext run` on the DirectRunner against a tiny real index: about 2 s an
  example, so few.

Generated: JSONL lines with arbitrary Unicode (escaped and raw lone surrogates, control
characters), deep nesting, huge, precise and non-finite numbers (1e400, 1.10, NaN, 5,000 digits),
duplicate keys, non-objects and garbage bytes; text lines with invalid UTF-8 and CRs; Parquet rows
with NaN, infinities, extreme integers and nulls; CRLF, no final newline, a byte order mark, empty
files, huge documents, several files per corpus, gzip and bzip2 (intact, and truncated for the
reader), and user mistakes (a README beside JSONL files, gzip data named .jsonl, UTF-16, a
directory, a file name that is not UTF-8, a pretty-printed JSON document).

CI runs the default, DPTEXT_HYPOTHESIS_EXAMPLES=8: 8 whole-job examples per corpus kind and 400
per reader/parser property, with derandomize=True so CI is reproducible; about 35 s on 2 shared
cores. A long run draws new examples each time (DPTEXT_HYPOTHESIS_EXAMPLES=40 took 4.6 min):

    DPTEXT_HYPOTHESIS_EXAMPLES=500 .venv/bin/python -m pytest tests/test_hostile_input.py
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import logging
import math
import os
import zlib
from pathlib import Path

import pytest
from apache_beam.io import source_test_utils
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dptext.pipeline.cli import main
from dptext.pipeline.io import ParseRecordFn, Unreadable, _LineSource, _rows, format_document, json_text
from dptext.transforms.beam import DEAD_LETTER, Document
from dptext.transforms.index import EmbeddingIndex
from dptext.transforms.mechanisms.truncated_gumbel import smallest_feasible_epsilon
from tests.conftest import build_words_index, shard_lines

EXAMPLES = int(os.environ.get("DPTEXT_HYPOTHESIS_EXAMPLES", 8))
UNIT = settings(
    max_examples=50 * EXAMPLES,
    deadline=None,
    derandomize="DPTEXT_HYPOTHESIS_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A job takes seconds: shrinking a failure would take many minutes, so a failing job example is
# reported as generated.
JOB = settings(UNIT, max_examples=EXAMPLES, phases=[Phase.explicit, Phase.reuse, Phase.generate])

WORDS = "the cat sat on a mat and dog ran to park hello world good bad day night".split()
CANARY = "quokkaflux"  # out of the vocabulary: may reach only the documents (as the placeholder)
BOM = b"\xef\xbb\xbf"
TEXT_FIELD = "text"


# --- strategies ------------------------------------------------------------------------------

any_char = st.characters(blacklist_categories=())  # every code point, lone surrogates too
unicode_text = st.text(any_char, max_size=20)
words = st.lists(st.sampled_from(WORDS + [CANARY, CANARY.upper()]), max_size=10).map(" ".join)
document_text = st.one_of(
    words,
    st.tuples(words, unicode_text, words).map("".join),
    st.just(""),
    st.integers(2_000, 40_000).map(lambda n: ("the cat " + CANARY + " ") * (n // 20)),
)  # over --max-doc-chars
ws = st.sampled_from(["", "", " ", "\t", "\r", " \t "])
number = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        [
            "1.10",
            "1e400",
            "-1e400",
            "1E+2",
            "0e0",
            "-0",
            "-0.0",
            "123456789012345678901234567890",
            "NaN",
            "Infinity",
            "-Infinity",
        ]
    ),
    st.integers(4_000, 6_000).map(lambda n: "9" * n),
)
json_string = st.builds(
    lambda s, escape: json.dumps(s, ensure_ascii=escape), st.one_of(unicode_text, words), st.booleans()
)
key = st.one_of(st.sampled_from(["id2", "label", "meta", "é", "", "a b", "Text", "text2"]).map(json.dumps), json_string)
scalar = st.one_of(number, st.sampled_from(["true", "false", "null"]), json_string)


def _array(items):
    return "[" + ",".join(items) + "]"


def _object(pairs):
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


value = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(_array), st.lists(st.tuples(key, inner), max_size=3).map(_object)
    ),
    max_leaves=12,
)
# Nesting far from Python's recursion limit either way, so the oracle (json.loads here) and the job
# (deeper in the stack) agree.
deep = st.one_of(st.integers(1, 150), st.integers(1_200, 3_000)).map(lambda d: "[" * d + "]" * d)


@st.composite
def json_record(draw, rid: int):
    """(the line as a str, the text of its text field or None, prefix, suffix): an object whose
    text field, when it has one string of it, sits between prefix and suffix."""
    pairs = [(json.dumps("id"), str(rid))] + draw(st.lists(st.tuples(key, st.one_of(value, deep)), max_size=4))
    kind = draw(st.sampled_from(["string"] * 6 + ["missing", "number", "null", "duplicate", "nested"]))
    text = draw(document_text)
    token = json.dumps(text, ensure_ascii=draw(st.booleans()))
    position = draw(st.integers(0, len(pairs)))
    parts, prefix = [], None
    left = draw(ws) + "{" + draw(ws)
    for i in range(len(pairs) + 1):
        if i == position and kind != "missing":
            field = {
                "string": token,
                "number": draw(number),
                "null": "null",
                "duplicate": token,
                "nested": _object([(json.dumps(TEXT_FIELD), token)]),
            }[kind]
            head = json.dumps(TEXT_FIELD) + draw(ws) + ":" + draw(ws)
            if kind == "string":
                prefix = left + "".join(p + "," + draw(ws) for p in parts) + head
                parts.append(None)  # the text field's place
            else:
                parts.append(head + field)
        if i < len(pairs):
            parts.append(pairs[i][0] + draw(ws) + ":" + draw(ws) + pairs[i][1])
    if kind == "duplicate":
        parts.append(json.dumps(TEXT_FIELD) + ":" + json.dumps(CANARY))
    tail = draw(ws) + "}" + draw(ws)
    if kind == "string":
        at = parts.index(None)
        suffix = "".join("," + draw(ws) + p for p in parts[at + 1 :]) + tail
        return prefix + token + suffix, text, prefix, suffix
    return left + ",".join(parts) + tail, None, None, None


@st.composite
def jsonl_line(draw, rid: int):
    """(raw bytes without "\\n", text or None, prefix, suffix) of one line of a JSONL file."""
    kind = draw(st.sampled_from(["record"] * 8 + ["garbage", "text", "value", "blank"]))
    if kind == "record":
        line, text, prefix, suffix = draw(json_record(rid))
        return line.encode("utf-8", "surrogatepass"), text, prefix, suffix  # a raw surrogate: not UTF-8
    if kind == "garbage":
        raw = draw(st.binary(max_size=40)).replace(b"\n", b"") + CANARY.encode()
    elif kind == "text":
        raw = draw(st.tuples(unicode_text, words).map("".join)).replace("\n", "").encode("utf-8", "surrogatepass")
    elif kind == "value":
        raw = draw(st.one_of(value, deep)).encode("utf-8", "surrogatepass")
    else:
        raw = draw(ws).encode()
    return raw, None, None, None


text_line = st.one_of(
    st.tuples(unicode_text, words, unicode_text)
    .map("".join)
    .map(lambda s: s.replace("\n", "").encode("utf-8", "surrogatepass")),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"") + b" " + CANARY.encode()),
    document_text.map(lambda s: s.replace("\n", "").encode("utf-8", "surrogatepass")),
)


@st.composite
def file_layout(draw, lines: list[bytes]):
    """The bytes of a file of these lines: CRLF or LF per line, a final newline or not, a BOM or
    not; and its compression. Returns (content, compression, per line: (offset, raw record as the
    reader sees it: the first with the BOM)). An empty last line without a newline is no record."""
    blob, records = BOM if draw(st.booleans()) else b"", []
    for i, line in enumerate(lines):
        record = (blob if i == 0 else b"") + line + (b"\r" if draw(st.booleans()) else b"")
        offset = 0 if i == 0 else len(blob)
        blob = blob[:offset] + record
        if i < len(lines) - 1 or draw(st.booleans()):
            blob += b"\n"
        elif record in (b"", BOM):
            break
        records.append((offset, record))
    return blob, draw(st.sampled_from(["", ".gz", ".bz2"])), records


COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress}


# --- oracles ---------------------------------------------------------------------------------


class _Pairs(list):
    pass


class _Number(str):
    pass


def _refuse(name):
    raise ValueError(name)


def expected_json_document(raw: bytes, offset: int) -> bool:
    """Whether a JSONL line must become a document, by Python's json module: UTF-8, strict JSON
    (no NaN), an object with exactly one text field, a string."""
    raw = raw[len(BOM) :] if raw.startswith(BOM) else raw
    try:
        parsed = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_Pairs,
            parse_int=_Number,
            parse_float=_Number,
            parse_constant=_refuse,
        )
    except (ValueError, RecursionError):
        return False
    if not isinstance(parsed, _Pairs):
        return False
    texts = [v for k, v in parsed if k == TEXT_FIELD]
    return len(texts) == 1 and type(texts[0]) is str


def strict_pairs(line: str):
    """The top-level pairs of an RFC 8259 line, numbers as written."""
    return json.loads(line, object_pairs_hook=_Pairs, parse_int=_Number, parse_float=_Number, parse_constant=_refuse)


def _id(pairs):
    return next((v for k, v in pairs if k == "id"), None)


def _surrogate_free(text: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


# --- reader and parser -----------------------------------------------------------------------


def _parse(fmt: str, raw, offset: int = 0) -> list:
    return list(ParseRecordFn(fmt, TEXT_FIELD).process(("f.jsonl", offset, raw)))


def _check_dead_letter(output, source: str, offset: int) -> dict:
    assert output.tag == DEAD_LETTER
    record = output.value
    assert set(record) == {"source", "offset", "reason"} and (record["source"], record["offset"]) == (source, offset)
    assert CANARY not in record["reason"].lower() and "\n" not in record["reason"]
    json_text(record).encode("utf-8")
    return record


@UNIT
@given(data=st.data(), offset=st.sampled_from([0, 7]))
def test_a_json_line_is_a_document_or_a_reasoned_dead_letter(data, offset):
    raw, text, prefix, suffix = data.draw(jsonl_line(1))
    if data.draw(st.booleans()):
        raw = BOM + raw
    (output,) = _parse("jsonl", raw, offset)
    if not expected_json_document(raw, offset):
        _check_dead_letter(output, "f.jsonl", offset)
        return
    assert isinstance(output, Document) and (output.source, output.offset) == ("f.jsonl", offset)
    line = raw.removeprefix(BOM).decode("utf-8")
    written = format_document(output, "jsonl", TEXT_FIELD)
    written.encode("utf-8")  # always UTF-8, whatever the input
    assert strict_pairs(written) == [(k, _surrogate_free(v) if k == TEXT_FIELD else v) for k, v in strict_pairs(line)]
    if prefix is not None:  # the rest of the line byte for byte
        assert output.text == _surrogate_free(text)
        assert written == prefix + json.dumps(output.text, ensure_ascii=False) + suffix


@UNIT
@given(raw=text_line, offset=st.sampled_from([0, 5]), bom=st.booleans())
def test_a_text_line_is_a_document_or_a_reasoned_dead_letter(raw, offset, bom):
    raw = BOM + raw if bom else raw
    (output,) = _parse("text", raw, offset)
    body = raw[len(BOM) :] if offset == 0 and raw.startswith(BOM) else raw
    try:
        expected = body.decode("utf-8")
    except UnicodeDecodeError:
        assert "not UTF-8" in _check_dead_letter(output, "f.jsonl", offset)["reason"]
        return
    assert output == Document("f.jsonl", offset, expected)


@UNIT
@given(data=st.data())
def test_the_reader_yields_every_line_once_or_says_where_the_file_is_damaged(data, tmp_path_factory):
    lines = data.draw(st.lists(st.one_of(text_line, jsonl_line(0).map(lambda r: r[0])), max_size=30))
    blob, suffix, records = data.draw(file_layout(lines))
    compressed = COMPRESS[suffix](blob)
    cut = data.draw(st.sampled_from([None, None, len(compressed) // 2, len(compressed) - 1])) if suffix else None
    path = tmp_path_factory.mktemp("reader") / f"c.txt{suffix}"
    path.write_bytes(compressed if cut is None else compressed[:cut])
    read = sorted(source_test_utils.read_from_source(_LineSource(str(path))), key=lambda r: r[1])
    if cut is None:
        assert read == [(str(path), o, r) for o, r in records]
        return
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16) if suffix == ".gz" else bz2.BZ2Decompressor()
    readable = decompressor.decompress(compressed[:cut])
    complete = readable[: readable.rfind(b"\n") + 1]
    *good, (source, offset, last) = read
    assert [r[2] for r in good] == (complete.split(b"\n")[:-1] if complete else [])
    assert (source, offset) == (str(path), len(complete)) and isinstance(last, Unreadable) and last.damaged_file


@UNIT
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "id": st.integers(-(2**63), 2**63 - 1),
                "text": st.one_of(st.none(), st.text(max_size=30)),
                "score": st.floats(),
                "tags": st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3)),
            }
        ),
        max_size=20,
    )
)
def test_parquet_rows_read_back_as_written(rows):
    import pyarrow as pa

    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [("id", pa.int64()), ("text", pa.string()), ("score", pa.float64()), ("tags", pa.list_(pa.string()))]
        ),
    )
    got = _rows(table)
    assert len(got) == len(rows)
    for a, b in zip(got, rows):
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def _same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


# --- the whole job ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    build_words_index(out, WORDS, d=6, neighbours=8, seed=5)
    return out


@pytest.fixture(scope="module")
def epsilon(index_dir):
    index = EmbeddingIndex.load(index_dir)
    return str(1.5 * smallest_feasible_epsilon(index.n, index.dmin))


def _run(index_dir, epsilon, inputs, output, caplog, capfd, *extra) -> tuple[int, str, str]:
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        code = main(
            [
                "run",
                "--input",
                str(inputs),
                "--output",
                str(output),
                "--index",
                str(index_dir),
                "--epsilon",
                epsilon,
                "--max-doc-chars",
                "5000",
                "--runner",
                "DirectRunner",
                *extra,
            ]
        )
    captured = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    caplog.clear()
    return code, captured.out + captured.err + logged, captured.err


def _no_canary_outside_documents(output, printed_and_logged: str) -> list[dict]:
    dead_text = "".join(Path(p).read_text("utf-8") for p in glob.glob(f"{output}.dead_letter-*"))
    report = Path(f"{output}.privacy_report.json").read_text("utf-8")
    for where, text in (("dead letter", dead_text), ("report", report), ("stdout/stderr/logs", printed_and_logged)):
        assert CANARY not in text.lower(), f"the canary leaked into the {where}"
    return [json.loads(line) for line in dead_text.splitlines()]


def _write_corpus(directory: Path, files: list, extension: str) -> dict:
    """Write files; returns path -> [(offset, raw record, text, prefix, suffix)]."""
    corpus = {}
    for n, (blob, suffix, records, meta) in enumerate(files):
        path = directory / f"part-{n}{extension}{suffix}"
        path.write_bytes(COMPRESS[suffix](blob))
        corpus[str(path)] = [(o, r, *m) for (o, r), m in zip(records, meta)]
    return corpus


@JOB
@given(data=st.data())
def test_jsonl_corpus_end_to_end(data, index_dir, epsilon, tmp_path_factory, caplog, capfd):
    directory = tmp_path_factory.mktemp("jsonl")
    files, rid = [], 0
    for _ in range(data.draw(st.integers(1, 3))):
        lines = []
        for _ in range(data.draw(st.integers(0, 6))):
            lines.append(data.draw(jsonl_line(rid)))
            rid += 1
        blob, suffix, records = data.draw(file_layout([line[0] for line in lines]))
        files.append((blob, suffix, records, [line[1:] for line in lines]))
    corpus = _write_corpus(directory, files, ".jsonl")
    mistake = data.draw(
        st.sampled_from([None] * 6 + ["readme", "misnamed gzip", "utf-16", "directory", "bad name", "pretty-printed"])
    )
    inputs = directory / "*"
    if mistake == "readme":
        (directory / "README").write_text(f"the {CANARY} corpus\n", encoding="utf-8")
    elif mistake == "misnamed gzip":
        (directory / "more.jsonl").write_bytes(gzip.compress(b'{"text": "the cat"}\n'))
    elif mistake == "utf-16":
        (directory / "more.jsonl").write_bytes('{"text": "the cat"}\n'.encode("utf-16"))
    elif mistake == "directory":
        inputs = directory
    elif mistake == "bad name":
        (directory / os.fsdecode(b"more\xff.jsonl")).write_bytes(b'{"text": "the cat"}\n')
    elif mistake == "pretty-printed":
        (directory / "more.json").write_text(json.dumps({"text": f"the {CANARY}"}, indent=1), encoding="utf-8")
    output = directory / "out" / "c"
    code, printed, err = _run(index_dir, epsilon, inputs, output, caplog, capfd)
    if mistake:
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("dptext run: error: ")
        assert CANARY not in printed.lower()
        return
    assert code == 0, err
    dead = _no_canary_outside_documents(output, printed)
    written = shard_lines(f"{output}-*")
    by_id = {}
    for line in written:
        rid = _id(strict_pairs(line))  # RFC 8259, UTF-8 (shard_lines decodes strictly)
        if rid is not None:
            by_id[rid] = line
    dead_at = {(d["source"], d["offset"]) for d in dead}
    assert len(dead_at) == len(dead)
    records = [(path, *r) for path, rs in corpus.items() for r in rs]
    assert len(written) + len(dead) == len(records)  # every record once
    for path, offset, raw, text, prefix, suffix in records:
        if not expected_json_document(raw, offset):
            assert (path, offset) in dead_at
            continue
        if prefix is None:  # a document only a count can check
            continue
        # Every other field byte for byte: the line is the input's, with another JSON string
        # (the canary, out of the vocabulary, became the placeholder) between prefix and suffix.
        line = by_id[_id(strict_pairs(raw.removeprefix(BOM).decode()))]
        end = suffix + ("\r" if raw.endswith(b"\r") else "")
        assert line.startswith(prefix) and line.endswith(end)
        new_text = json.loads(line[len(prefix) : len(line) - len(end)])
        assert isinstance(new_text, str) and CANARY not in new_text.lower()


@JOB
@given(data=st.data())
def test_text_corpus_end_to_end(data, index_dir, epsilon, tmp_path_factory, caplog, capfd):
    directory = tmp_path_factory.mktemp("text")
    files = []
    for _ in range(data.draw(st.integers(1, 3))):
        lines = data.draw(st.lists(text_line, max_size=6))
        blob, suffix, records = data.draw(file_layout(lines))
        files.append((blob, suffix, records, [()] * len(records)))
    corpus = _write_corpus(directory, files, ".txt")
    output = directory / "out" / "c"
    code, printed, err = _run(index_dir, epsilon, directory / "*", output, caplog, capfd)
    assert code == 0, err
    dead = _no_canary_outside_documents(output, printed)
    written = shard_lines(f"{output}-*")
    expected_dead = set()
    for path, records in corpus.items():
        for offset, raw in records:
            body = raw[len(BOM) :] if offset == 0 and raw.startswith(BOM) else raw
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                expected_dead.add((path, offset))
    assert {(d["source"], d["offset"]) for d in dead} == expected_dead and len(dead) == len(expected_dead)
    assert len(written) == sum(len(r) for r in corpus.values()) - len(expected_dead)
    assert all(CANARY not in line.lower() for line in written)  # OOV: the placeholder


@JOB
@given(data=st.data())
def test_parquet_corpus_end_to_end(data, index_dir, epsilon, tmp_path_factory, caplog, capfd):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("text", pa.string()),
            ("score", pa.float64()),
            ("big", pa.int64()),
            ("tags", pa.list_(pa.string())),
            ("blob", pa.binary()),
        ]
    )
    directory = tmp_path_factory.mktemp("parquet")
    rows_by_file, rid = {}, 0
    for n in range(data.draw(st.integers(1, 2))):
        rows = []
        for _ in range(data.draw(st.integers(0, 8))):
            rows.append(
                {
                    "id": rid,
                    "text": data.draw(st.one_of(st.none(), document_text.map(_surrogate_free))),
                    "score": data.draw(st.floats()),
                    "big": data.draw(st.sampled_from([-(2**63), 2**63 - 1, 0])),
                    "tags": data.draw(st.one_of(st.none(), st.lists(st.text(max_size=4), max_size=2))),
                    "blob": data.draw(st.binary(max_size=8)),
                }
            )
            rid += 1
        path = directory / f"part-{n}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=data.draw(st.integers(1, 5)))
        rows_by_file[str(path)] = rows
    output = directory / "out" / "c"
    code, printed, err = _run(index_dir, epsilon, directory / "*.parquet", output, caplog, capfd)
    assert code == 0, err
    dead = _no_canary_outside_documents(output, printed)
    written = {r["id"]: r for r in pq.read_table(glob.glob(f"{output}-*.parquet")).to_pylist()}
    expected_dead = {(path, i) for path, rows in rows_by_file.items() for i, r in enumerate(rows) if r["text"] is None}
    assert {(d["source"], d["offset"]) for d in dead} == expected_dead and len(dead) == len(expected_dead)
    kept = [r for rows in rows_by_file.values() for r in rows if r["text"] is not None]
    assert sorted(written) == sorted(r["id"] for r in kept)
    for row in kept:
        out = written[row["id"]]
        assert all(_same(out[k], row[k]) for k in row if k != "text") and CANARY not in out["text"].lower()
