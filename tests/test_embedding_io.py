"""Tests for transforms.embedding_io: formats, detection, gzip, duplicates and every error."""

import dataclasses
import gzip
import os
import pickle
import random

import numpy as np
import pytest

from dptext.transforms import embedding_io
from dptext.transforms.embedding_io import EmbeddingFormatError, EmbeddingReadStats, read_embedding

NBSP = "\u00a0"
WORDS = ["the", f"at{NBSP}name@domain.com", "café", "naïve", "東京", "straße", "x", "</s>"]
D = 5


def _vectors(n=None, d=D, seed=0):
    n = len(WORDS) if n is None else n
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.choice([1e-3, 1.0, 30.0], size=(n, 1))).astype(np.float32)


def _text_lines(words, vectors, trailing=""):
    # repr(float(x)) of a float32 x parses back to exactly x after rounding to float32.
    return [w + " " + " ".join(repr(float(v)) for v in row) + trailing for w, row in zip(words, vectors)]


def _write_text(path, words, vectors, header=True, newline="\n", trailing="", opener=open):
    lines = _text_lines(words, vectors, trailing)
    if header:
        lines.insert(0, f"{len(words)} {vectors.shape[1]}")
    with opener(path, "wb") as f:
        f.write("".join(line + newline for line in lines).encode("utf-8"))
    return path


def _binary_bytes(words, vectors, newline=True, n=None):
    out = [f"{len(words) if n is None else n} {vectors.shape[1]}\n".encode()]
    for word, row in zip(words, vectors):
        word_bytes = word if isinstance(word, bytes) else word.encode("utf-8")
        out.append(word_bytes + b" " + row.astype("<f4").tobytes() + (b"\n" if newline else b""))
    return b"".join(out)


def _write_bytes(path, data, opener=open):
    with opener(path, "wb") as f:
        f.write(data)
    return path


def _assert_same(words, vectors, got_words, got_vectors):
    assert got_words == list(words)
    assert got_vectors.dtype == np.float32
    assert got_vectors.flags["C_CONTIGUOUS"]
    assert got_vectors.shape == vectors.shape
    # Bitwise equality: the reader must reproduce float32 values exactly.
    np.testing.assert_array_equal(got_vectors.view(np.uint32), vectors.view(np.uint32))


def _error(path, fmt="auto"):
    with pytest.raises(EmbeddingFormatError) as info:
        read_embedding(path, fmt=fmt)
    err = info.value
    assert os.fspath(path) in str(err)
    return err


def _line_error(path, line, *phrases, fmt="auto"):
    err = _error(path, fmt)
    assert err.line == line, str(err)
    assert f"line {line}:" in str(err)
    for phrase in phrases:
        assert phrase in str(err), str(err)
    return err


def _record_error(path, record, *phrases, fmt="auto"):
    err = _error(path, fmt)
    assert err.record == record and err.line is None, str(err)
    assert f"record {record} " in str(err)
    for phrase in phrases:
        assert phrase in str(err), str(err)
    return err


@pytest.fixture
def small_batches(monkeypatch):
    """Make every few lines / bytes a separate batch so batch boundaries get exercised."""
    monkeypatch.setattr(embedding_io, "_BATCH_BYTES", 37)
    monkeypatch.setattr(embedding_io, "_BINARY_CHUNK_BYTES", 23)


# --- Round trips and detection -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["auto", "word2vec"])
def test_word2vec_text_round_trip(tmp_path, fmt):
    vectors = _vectors()
    path = _write_text(tmp_path / "e.txt", WORDS, vectors)
    words, got, stats = read_embedding(path, fmt=fmt)
    _assert_same(WORDS, vectors, words, got)
    assert stats == EmbeddingReadStats("word2vec", len(WORDS), D, 0, len(WORDS) + 1)


@pytest.mark.parametrize("fmt", ["auto", "glove"])
def test_glove_round_trip(tmp_path, fmt):
    vectors = _vectors()
    path = _write_text(tmp_path / "e.txt", WORDS, vectors, header=False)
    words, got, stats = read_embedding(str(path), fmt=fmt)
    _assert_same(WORDS, vectors, words, got)
    assert stats == EmbeddingReadStats("glove", len(WORDS), D, 0, len(WORDS))


@pytest.mark.parametrize("fmt", ["auto", "word2vec-binary"])
@pytest.mark.parametrize("newline", [True, False], ids=["c-tool", "gensim"])
def test_word2vec_binary_round_trip(tmp_path, fmt, newline):
    vectors = _vectors()
    path = _write_bytes(tmp_path / "e.bin", _binary_bytes(WORDS, vectors, newline=newline))
    words, got, stats = read_embedding(path, fmt=fmt)
    _assert_same(WORDS, vectors, words, got)
    assert stats == EmbeddingReadStats("word2vec-binary", len(WORDS), D, 0, len(WORDS) + 1)


def test_binary_detected_even_with_zero_vectors(tmp_path):
    # All-zero float bytes are valid UTF-8 (NULs); detection must still say binary.
    vectors = np.zeros((3, 4), np.float32)
    path = _write_bytes(tmp_path / "z.bin", _binary_bytes(["a", "b", "c"], vectors))
    assert read_embedding(path)[2].format == "word2vec-binary"


def test_binary_detected_when_float_bytes_contain_newline(tmp_path):
    # readline() after the header stops at the first 0x0A byte: here it leaves "AB" or
    # nothing after the word's space, both printable, so length must decide.
    vectors = _vectors(2, 4)
    vectors[0, 0] = np.frombuffer(b"\x0aAB?", "<f4")[0]
    vectors[1, 0] = np.frombuffer(b"AB\x0a?", "<f4")[0]
    for order in ([0, 1], [1, 0]):
        path = _write_bytes(tmp_path / "nl.bin", _binary_bytes(["a", "b"], vectors[order]))
        words, got, stats = read_embedding(path)
        assert stats.format == "word2vec-binary"
        _assert_same(["a", "b"], vectors[order], words, got)


def test_short_first_text_record_hints_at_forcing_text(tmp_path):
    path = _write_bytes(tmp_path / "e.txt", b"2 3\na 1\nb 1 2 3\n")
    assert "fmt='word2vec'" in str(_error(path))
    _line_error(path, 2, "expected 3 values", "got 1", fmt="word2vec")


def test_one_dimensional_glove_is_not_a_header(tmp_path):
    path = _write_bytes(tmp_path / "g.txt", b"apple 0.5\npear -1\n")
    words, vectors, stats = read_embedding(path)
    assert stats.format == "glove" and words == ["apple", "pear"]
    np.testing.assert_array_equal(vectors, np.array([[0.5], [-1.0]], np.float32))


@pytest.mark.parametrize(
    "write",
    [
        lambda p, w, v: _write_text(p, w, v, opener=gzip.open),
        lambda p, w, v: _write_text(p, w, v, header=False, opener=gzip.open),
        lambda p, w, v: _write_bytes(p, _binary_bytes(w, v), opener=gzip.open),
    ],
    ids=["word2vec", "glove", "word2vec-binary"],
)
def test_gzip(tmp_path, write):
    vectors = _vectors()
    path = write(tmp_path / "e.gz", WORDS, vectors)
    words, got, _ = read_embedding(path)
    _assert_same(WORDS, vectors, words, got)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(_binary_bytes(WORDS, _vectors()))
    path = _write_bytes(tmp_path / "cut.bin.gz", data[: len(data) // 2])
    assert "gzip" in str(_error(path))


def test_many_batches(tmp_path, small_batches):
    words = [f"w{i}" for i in range(50)] + WORDS
    vectors = _vectors(len(words))
    for path in [
        _write_text(tmp_path / "a.txt", words, vectors),
        _write_text(tmp_path / "b.txt", words, vectors, header=False),
        _write_bytes(tmp_path / "c.bin", _binary_bytes(words, vectors)),
        _write_bytes(tmp_path / "d.bin", _binary_bytes(words, vectors, newline=False)),
    ]:
        got_words, got, _ = read_embedding(path)
        _assert_same(words, vectors, got_words, got)


def test_parsing_matches_python_float_rounded_to_float32(tmp_path):
    rng = random.Random(7)
    literals = []
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 22)))
        cut = rng.randint(0, len(digits))
        mantissa = rng.choice(["", "-", "+"]) + digits[:cut] + "." + digits[cut:]
        if mantissa.rstrip("+-") == ".":
            mantissa += "5"
        exponent = rng.choice(["", f"e{rng.randint(-44, 37)}", f"E+{rng.randint(0, 30)}"])
        if abs(float(mantissa + exponent)) < 3e38:  # Stay within float32's range.
            literals.append(mantissa + exponent)
    # Values half-way between adjacent float32s, where double rounding is most delicate.
    for _ in range(500):
        x = np.float32(rng.uniform(-4, 4))
        literals.append(repr((float(x) + float(np.nextafter(x, np.float32(9)))) / 2))
    d = 10
    rows = [literals[i : i + d] for i in range(0, len(literals) - d + 1, d)]
    path = tmp_path / "floats.txt"
    path.write_text("".join(f"w{i} {' '.join(r)}\n" for i, r in enumerate(rows)), "utf-8")
    _, got, _ = read_embedding(path, fmt="glove")
    expected = np.array([[float(x) for x in r] for r in rows]).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


# --- Tolerated variations ------------------------------------------------------------------


@pytest.mark.parametrize("header", [True, False])
def test_trailing_spaces_and_crlf(tmp_path, header):
    vectors = _vectors()
    path = _write_text(tmp_path / "e.txt", WORDS, vectors, header=header, newline=" \r\n", trailing=" ")
    words, got, stats = read_embedding(path)
    _assert_same(WORDS, vectors, words, got)
    assert stats.format == ("word2vec" if header else "glove")


def test_byte_order_mark_and_trailing_blank_lines(tmp_path):
    vectors = _vectors()
    body = "".join(line + "\n" for line in [f"{len(WORDS)} {D}"] + _text_lines(WORDS, vectors))
    path = _write_bytes(tmp_path / "e.txt", b"\xef\xbb\xbf" + body.encode() + b"\n \r\n")
    words, got, stats = read_embedding(path)
    _assert_same(WORDS, vectors, words, got)
    assert stats.lines_read == len(WORDS) + 3


def test_no_final_newline(tmp_path):
    path = _write_bytes(tmp_path / "e.txt", b"2 2\na 1 2\nb 3 4")
    words, vectors, stats = read_embedding(path)
    assert words == ["a", "b"] and stats.lines_read == 3
    np.testing.assert_array_equal(vectors, [[1, 2], [3, 4]])


def test_words_keep_unicode_spaces(tmp_path):
    words = [f"at{NBSP}{NBSP}name", "tab\there", "em\u2003space", "line\u2028sep"]
    vectors = _vectors(len(words))
    for header in (True, False):
        path = _write_text(tmp_path / f"u{header}.txt", words, vectors, header=header)
        got_words, got, _ = read_embedding(path)
        _assert_same(words, vectors, got_words, got)


# --- Duplicates ----------------------------------------------------------------------------


def _with_duplicates():
    words = ["a", "b", "a", "c", "b", "a"]
    return words, _vectors(len(words)), ["a", "b", "c"], [0, 1, 3]


@pytest.mark.parametrize("kind", ["word2vec", "glove", "word2vec-binary"])
def test_duplicates_keep_first(tmp_path, kind, small_batches):
    words, vectors, unique, first_rows = _with_duplicates()
    if kind == "word2vec-binary":
        path = _write_bytes(tmp_path / "d.bin", _binary_bytes(words, vectors))
    else:
        path = _write_text(tmp_path / "d.txt", words, vectors, header=kind == "word2vec")
    got_words, got, stats = read_embedding(path)
    _assert_same(unique, vectors[first_rows], got_words, got)
    assert (stats.format, stats.n, stats.duplicates_skipped) == (kind, 3, 3)


# --- Errors --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_embedding(tmp_path / "nope.txt")


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="word2vec-binary"):
        read_embedding(tmp_path / "e.txt", fmt="fasttext")


def test_empty_file(tmp_path):
    assert "empty" in str(_error(_write_bytes(tmp_path / "empty.txt", b"")))
    assert "empty" in str(_error(_write_bytes(tmp_path / "empty.gz", b"", opener=gzip.open)))


def test_forced_word2vec_without_header(tmp_path):
    path = _write_text(tmp_path / "g.txt", WORDS, _vectors(), header=False)
    _line_error(path, 1, "header", "fmt='glove'", fmt="word2vec")
    _line_error(path, 1, "header", fmt="word2vec-binary")


@pytest.mark.parametrize("header", [b"0 5", b"5 0", b"-3 5"])
def test_header_must_be_positive(tmp_path, header):
    path = _write_bytes(tmp_path / "h.txt", header + b"\na 1 2 3 4 5\n")
    _line_error(path, 1, "positive")


def test_forced_glove_on_word2vec_file_hints_at_header(tmp_path):
    path = _write_text(tmp_path / "e.txt", WORDS, _vectors())
    _line_error(path, 2, "dimension mismatch", "fmt='word2vec'", fmt="glove")


def test_fewer_values(tmp_path):
    path = _write_bytes(tmp_path / "e.txt", b"3 3\na 1 2 3\nb 1 2\nc 1 2 3\n")
    _line_error(path, 3, "expected 3 values", "got 2", "header on line 1")


def test_more_values(tmp_path):
    path = _write_bytes(tmp_path / "e.txt", b"a 1 2 3\nb 1 2 3\nc 4 1 2 3\n")
    _line_error(path, 3, "expected 3 values", "got 4", "line 1 has 3 values")


def test_word_only(tmp_path):
    _line_error(_write_bytes(tmp_path / "e.txt", b"2 2\na 1 2\nb\n"), 3, "got 0")
    _line_error(_write_bytes(tmp_path / "g.txt", b"a\n"), 1, "no values")


def test_glove_dimension_mismatch_in_later_batch(tmp_path, small_batches):
    lines = [f"w{i} 1 2 3" for i in range(30)] + ["bad 1 2"] + ["z 1 2 3"]
    path = tmp_path / "g.txt"
    path.write_text("\n".join(lines) + "\n")
    _line_error(path, 31, "dimension mismatch", "expected 3", "got 2")


@pytest.mark.parametrize("value", [b"abc", b"1.5.2", b"1e", b"1,5", b"0x10", b"1_0", b"\xc2\xa01"])
def test_non_numeric_value(tmp_path, value):
    path = _write_bytes(tmp_path / "e.txt", b"a 1 2 3\nb 1 " + value + b" 3\n")
    err = _line_error(path, 2, "value 2 of 3", "not a decimal number")
    assert "1.5.2" not in str(err)  # Line content stays out of messages.


@pytest.mark.parametrize("value", [b"nan", b"-inf", b"Infinity", b"1e39", b"-3.5e38"])
def test_non_finite_value(tmp_path, value, small_batches):
    path = _write_bytes(tmp_path / "e.txt", b"3 2\na 1 2\nb 3 4\nc 5 " + value + b"\n")
    _line_error(path, 4, "value 2 of 2", "finite")


def test_empty_value(tmp_path):
    _line_error(_write_bytes(tmp_path / "e.txt", b"a 1 2\nb 1  2\n"), 2, "two spaces")
    _line_error(_write_bytes(tmp_path / "f.txt", b"a 1 2\nb  1 2\n"), 2, "two spaces")


def test_empty_word(tmp_path):
    _line_error(_write_bytes(tmp_path / "e.txt", b"2 2\na 1 2\n 1 2\n"), 3, "word is empty")
    _line_error(_write_bytes(tmp_path / "g.txt", b" 1 2\na 1 2\n"), 1, "word is empty")


def test_invalid_utf8_word_in_text(tmp_path):
    _line_error(_write_bytes(tmp_path / "e.txt", b"a 1 2\n\xff\xfe 1 2\n"), 2, "UTF-8")
    # Also as the first record after a header, where it must not look binary.
    _line_error(_write_bytes(tmp_path / "h.txt", b"1 2\n\xff\xfe 1 2\n"), 2, "UTF-8")


def test_blank_line_inside_text(tmp_path):
    _line_error(_write_bytes(tmp_path / "e.txt", b"3 2\na 1 2\n\nb 1 2\nc 1 2\n"), 3, "empty line")
    _line_error(_write_bytes(tmp_path / "g.txt", b"\na 1 2\n"), 1, "empty")


def test_first_error_wins(tmp_path):
    path = _write_bytes(tmp_path / "e.txt", b"a 1 2\nb 1 x\nc 1 2 3\n")
    _line_error(path, 2, "not a decimal number")


@pytest.mark.parametrize("extra_newlines", [b"", b"\n\n"])
def test_header_count_too_large(tmp_path, extra_newlines):
    path = _write_bytes(tmp_path / "e.txt", b"4 2\na 1 2\nb 1 2\n" + extra_newlines)
    _line_error(path, 4, "declares 4 words", "has 2")


def test_header_count_too_small(tmp_path, small_batches):
    path = _write_text(tmp_path / "e.txt", WORDS, _vectors())
    lines = path.read_bytes().split(b"\n", 1)
    path.write_bytes(f"{len(WORDS) - 2} {D}\n".encode() + lines[1])
    _line_error(path, len(WORDS), "declares 6 words", "more lines follow")


def test_binary_truncated_in_vector(tmp_path):
    data = _binary_bytes(WORDS, _vectors())
    # Drop the final "\n" and the last 6 of the last record's 4 * D vector bytes.
    path = _write_bytes(tmp_path / "e.bin", data[: len(data) - 1 - 6])
    _record_error(path, len(WORDS), "truncated", f"{4 * D} bytes", f"only {4 * D - 6} remain")


def test_binary_truncated_in_word(tmp_path):
    data = _binary_bytes(WORDS, _vectors(), newline=False)
    cut = len(data) - (4 * D) - len(" </s>".encode()) + 2
    path = _write_bytes(tmp_path / "e.bin", data[:cut])
    _record_error(path, len(WORDS), "truncated inside the word")


@pytest.mark.parametrize("newline", [True, False])
def test_binary_fewer_records(tmp_path, newline, small_batches):
    vectors = _vectors()
    data = _binary_bytes(WORDS, vectors, newline, n=len(WORDS) + 2)
    path = _write_bytes(tmp_path / "e.bin", data)
    _record_error(path, len(WORDS) + 1, "declares 10 words", f"has {len(WORDS)}")


def test_binary_more_records(tmp_path):
    path = _write_bytes(tmp_path / "e.bin", _binary_bytes(WORDS, _vectors(), n=len(WORDS) - 1))
    _record_error(path, len(WORDS), "more data follows")


def test_binary_invalid_utf8_word(tmp_path):
    words = list(WORDS)
    words[2] = b"caf\xe9"  # Latin-1, not UTF-8.
    _record_error(_write_bytes(tmp_path / "e.bin", _binary_bytes(words, _vectors())), 3, "UTF-8")


def test_binary_empty_word(tmp_path):
    words = list(WORDS)
    words[4] = ""
    path = _write_bytes(tmp_path / "e.bin", _binary_bytes(words, _vectors()))
    _record_error(path, 5, "word is empty")


def test_binary_non_finite(tmp_path):
    vectors = _vectors()
    vectors[3, 2] = np.inf
    path = _write_bytes(tmp_path / "e.bin", _binary_bytes(WORDS, vectors))
    _record_error(path, 4, f"value 3 of {D}", "finite")


def test_binary_word_without_space(tmp_path, monkeypatch):
    monkeypatch.setattr(embedding_io, "_MAX_BINARY_WORD_BYTES", 16)
    path = _write_bytes(tmp_path / "e.bin", b"1 2\n" + b"\xff" * 40 + b" " + b"\0" * 8)
    _record_error(path, 1, "no space")


def test_error_pickles_and_is_value_error(tmp_path):
    err = _error(_write_bytes(tmp_path / "e.txt", b"a 1 2\nb 1\n"))
    assert isinstance(err, ValueError)
    clone = pickle.loads(pickle.dumps(err))
    assert (str(clone), clone.line, clone.path) == (str(err), err.line, err.path)


def test_stats_are_frozen(tmp_path):
    _, _, stats = read_embedding(_write_bytes(tmp_path / "e.txt", b"a 1\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.n = 3


def test_a_directory_is_named_as_such_not_a_traceback(tmp_path):
    with pytest.raises(EmbeddingFormatError, match="this is a directory; expected an embedding file") as err:
        read_embedding(tmp_path)
    assert err.value.path == str(tmp_path)
