"""Read word embeddings: word2vec text, GloVe text and word2vec binary, optionally gzipped.

`read_embedding(path, fmt="auto")` returns ``(words, vectors, stats)``: the words in file
order, a C-contiguous float32 matrix with one row per word, and an `EmbeddingReadStats`.
Every malformed input raises `EmbeddingFormatError`, which names the file, the line (text)
or record (binary), the problem and what would be valid. Messages may quote a word (the
vocabulary of a public embedding) but never the rest of a line.

Formats
  word2vec         line 1 is the header ``"<n> <d>"``; then n lines ``"word v1 ... vd"``.
  glove            no header; every line is ``"word v1 ... vd"``; d comes from line 1.
  word2vec-binary  header line ``"<n> <d>\\n"``; then n records: the word's UTF-8 bytes, one
                   ASCII space, d little-endian float32 values, and optionally one ``"\\n"``
                   (the original C tool writes it, gensim 4 does not).

Text lines are UTF-8 and end in ``"\\n"`` (a ``"\\r"`` before it is dropped). Values are
separated by exactly one ASCII space; trailing ASCII spaces are ignored. Words may contain
any character except ASCII space and newline, in particular U+00A0 NO-BREAK SPACE, so lines
are split on b" " only and never with ``str.split()``. A line is split at its first space,
which for a valid line is the same as ``rsplit(" ", d)`` (the word has no ASCII space), and
lets a line with too many values be reported as such instead of silently becoming a word
with spaces in it. Blank lines are allowed only at the end of a text file. A UTF-8 byte
order mark at the start of the file is skipped.

Values are decimal literals (``-0.5``, ``1e-3``, ``.25``); each is parsed as Python's
``float(x)`` does and then rounded to float32. NaN, infinities and values that overflow
float32 are errors. Duplicate words keep their first occurrence; later ones are skipped and
counted in ``stats.duplicates_skipped``. For word2vec formats the header's n counts records
in the file (duplicates included) and must match exactly.

Detection with ``fmt="auto"``
  1. A first line made of exactly two integers is a word2vec header; anything else is GloVe.
     (Ambiguous only for a one-dimensional GloVe file whose first word is an integer and
     whose first value is integer-valued; pass ``fmt="glove"`` for such a file.)
  2. After a header, the bytes of the first record up to the next newline decide text or
     binary. Text if the part after the word's terminating space is printable ASCII (the
     digits, signs, dots, exponents and spaces of decimal numbers) and at least 2d - 1 bytes
     long (the shortest d values can be); when the record has no space, text if it is UTF-8
     without NUL bytes. Otherwise binary. A binary record passes for text only if its first
     2d - 1 float bytes are all printable ASCII with no newline among them, which real
     embeddings do not produce (for d = 1 it can happen: force the format). A text file
     whose first record is too short for d values is read as binary; its error then says
     so and suggests fmt="word2vec".

Compression is recognised by the gzip magic bytes (files named ``*.gz`` are gzip files in
practice, and an uncompressed embedding cannot start with those bytes). Byte offsets in
errors count uncompressed bytes.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zlib
from typing import BinaryIO, Iterator

import numpy as np

from dptext.transforms.errors import DptextError, MissingFile, ParameterError

FORMATS = ("auto", "word2vec", "glove", "word2vec-binary")

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
# Text is parsed in batches of about this many bytes: large enough that the per-batch numpy
# calls dominate, small enough that the float64 staging array stays a few MiB.
_BATCH_BYTES = 1 << 22
_BINARY_CHUNK_BYTES = 1 << 22
# Longest first line read when sniffing a header, and longest first record read when
# telling word2vec text from binary.
_HEADER_PEEK_BYTES = 4096
_RECORD_PEEK_BYTES = 1 << 20
# A binary word longer than this without its terminating space means the file is corrupt.
_MAX_BINARY_WORD_BYTES = 1 << 16

_HEADER_RE = re.compile(rb"[+-]?[0-9]+[ \t]+[+-]?[0-9]+")
# The decimal literals Python's float() accepts, without underscores or surrounding spaces.
# numpy.fromstring accepts exactly these among strings made of _NUMBER_BYTES.
_DECIMAL_RE = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NONFINITE_RE = re.compile(rb"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_NUMBER_BYTES = b"0123456789.eE+- "
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F)) + b"\t"
_VALID_TEXT_LINE = "each line must be 'word v1 ... vd' with values separated by one ASCII space"


class EmbeddingFormatError(DptextError, ValueError):
    """A malformed embedding file: says which file, where in it, what is wrong, what is valid.

    ``line`` is the 1-based text line (header included) and ``record`` the 1-based binary
    record, whichever applies; ``byte_offset`` is the record's offset in uncompressed bytes.
    """

    def __init__(
        self,
        path: str,
        problem: str,
        line: int | None = None,
        record: int | None = None,
        byte_offset: int | None = None,
    ):
        self.path = path
        self.problem = problem
        self.line = line
        self.record = record
        self.byte_offset = byte_offset
        if line is not None:
            where = f"{path}, line {line}"
        elif record is not None:
            where = f"{path}, record {record}"
            if byte_offset is not None:
                where += f" (byte offset {byte_offset})"
        else:
            where = path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Keeps the exception picklable (Beam moves errors between processes).
        return (type(self), (self.path, self.problem, self.line, self.record, self.byte_offset))


@dataclasses.dataclass(frozen=True)
class EmbeddingReadStats:
    """What `read_embedding` read.

    format: the format actually read ("word2vec", "glove" or "word2vec-binary").
    n, d: rows and columns of the returned matrix (unique words, dimension).
    duplicates_skipped: records dropped because their word appeared earlier.
    lines_read: text lines read, header and trailing blank lines included; for binary
      files the header line plus the records.
    """

    format: str
    n: int
    d: int
    duplicates_skipped: int
    lines_read: int


def read_embedding(path: str | os.PathLike, fmt: str = "auto") -> tuple[list[str], np.ndarray, EmbeddingReadStats]:
    """Read an embedding file into (words, float32 vectors of shape (n, d), stats).

    fmt is "auto" (detect; see the module docstring), "word2vec", "glove" or
    "word2vec-binary". Raises FileNotFoundError for a missing file and
    EmbeddingFormatError for a malformed one.
    """
    if fmt not in FORMATS:
        raise ParameterError(f"fmt {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    name = os.fsdecode(path)
    if not os.path.exists(name):
        raise MissingFile(f"{name}: no such embedding file")
    if os.path.isdir(name):
        raise EmbeddingFormatError(
            name,
            "this is a directory; expected an embedding file (word2vec text "
            "or binary, or GloVe text, optionally gzipped) inside it",
        )
    try:
        with _open(name) as f:
            return _read(f, name, fmt)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise EmbeddingFormatError(
            name, f"the gzip data is truncated or corrupt ({e}); expected a complete gzip file"
        ) from e


def _open(name: str) -> BinaryIO:
    """Open for binary reading, through gzip if the file starts with the gzip magic bytes."""
    with open(name, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    f: BinaryIO = gzip.open(name, "rb") if compressed else open(name, "rb")  # type: ignore
    try:
        if f.read(3) != _UTF8_BOM:
            f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def _read(f: BinaryIO, name: str, fmt: str) -> tuple[list[str], np.ndarray, EmbeddingReadStats]:
    start = f.tell()
    first = f.readline(_HEADER_PEEK_BYTES)
    if not first:
        raise EmbeddingFormatError(
            name,
            "the file is empty; expected a word2vec header 'n d' or GloVe lines 'word v1 ... vd'",
        )
    # No leading space: " 1 2" is a GloVe line with an empty word, not a header.
    looks_like_header = _HEADER_RE.fullmatch(first.rstrip()) is not None and (
        first.endswith(b"\n") or len(first) < _HEADER_PEEK_BYTES
    )
    detect = fmt == "auto"
    if detect:
        fmt = "word2vec" if looks_like_header else "glove"
    if fmt == "glove":
        f.seek(start)
        hint = ""
        if looks_like_header:
            hint = " (line 1 looks like a word2vec header 'n d'; use fmt='word2vec' or 'auto')"
        return _read_text(f, name, "glove", header=None, hint=hint)

    n, d = _parse_header(name, first)
    header_end = f.tell()
    detected_binary = detect and _is_binary_record(f.readline(_RECORD_PEEK_BYTES), d)
    f.seek(header_end)
    if detected_binary:
        try:
            return _read_binary(f, name, n, d, header_end)
        except EmbeddingFormatError as e:
            raise EmbeddingFormatError(
                e.path,
                e.problem + " (the first record looked binary, so the file was read as "
                "word2vec binary; pass fmt='word2vec' if it is text)",
                e.line,
                e.record,
                e.byte_offset,
            ) from None
    if fmt == "word2vec-binary":
        return _read_binary(f, name, n, d, header_end)
    return _read_text(f, name, "word2vec", header=(n, d), hint="")


def _parse_header(name: str, first: bytes) -> tuple[int, int]:
    stripped = first.strip()
    if _HEADER_RE.fullmatch(stripped) is None:
        raise EmbeddingFormatError(
            name,
            f"expected a word2vec header '<word count> <dimension>' (two positive integers), "
            f"found {len(stripped.split())} fields; for a file without a header use fmt='glove'",
            line=1,
        )
    n, d = (int(x) for x in stripped.split())
    if n <= 0 or d <= 0:
        raise EmbeddingFormatError(
            name,
            f"the word2vec header declares n={n} words of dimension d={d}; both must be positive integers",
            line=1,
        )
    return n, d


def _is_binary_record(record: bytes, d: int) -> bool:
    """Whether the first record after a header is word2vec binary rather than text.

    `record` is what readline() returned after the header, so for binary data it may stop
    early at a 0x0A byte inside the float values.
    """
    if not record:
        return False  # Header only: let the text reader report the missing records.
    record = record.rstrip(b"\r\n")
    space = record.find(b" ")
    if space >= 0:
        values = record[space + 1 :].rstrip(b" ")
        # d values need at least 2d - 1 bytes ("0 0 ... 0"); a shorter run is binary data
        # cut short by a newline byte.
        return len(values) < 2 * d - 1 or bool(values.translate(None, _PRINTABLE_ASCII))
    try:
        record.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in record


class _Rows:
    """A float32 (rows, d) matrix filled block by block; grows by doubling."""

    def __init__(self, d: int, capacity: int, limit: int | None):
        self._arr = np.empty((capacity, d), dtype=np.float32)
        self._limit = limit
        self.n = 0

    def _reserve(self, need: int) -> None:
        cap = len(self._arr)
        if need <= cap:
            return
        new_cap = max(need, 2 * cap)
        if self._limit is not None and need <= self._limit:
            new_cap = min(new_cap, self._limit)
        grown = np.empty((new_cap, self._arr.shape[1]), dtype=np.float32)
        grown[: self.n] = self._arr[: self.n]
        self._arr = grown

    def extend(self, block: np.ndarray) -> None:
        self._reserve(self.n + len(block))
        self._arr[self.n : self.n + len(block)] = block
        self.n += len(block)

    def append(self, row: np.ndarray) -> None:
        self._reserve(self.n + 1)
        self._arr[self.n] = row
        self.n += 1

    def result(self) -> np.ndarray:
        if self.n == len(self._arr):
            return self._arr
        return self._arr[: self.n].copy()


def _initial_capacity(f: BinaryIO, n: int | None, d: int, min_record_bytes: int) -> int:
    """Rows to allocate up front: the header's n if the file can hold that many records.

    Otherwise (no header, gzip, or a header promising more than the file holds) start
    with 16 MiB of rows and let _Rows double, so a corrupt header cannot demand memory.
    """
    start = min((1 << 24) // (4 * d), n if n is not None else 1 << 62)
    if n is None or isinstance(f, gzip.GzipFile):
        return start
    return n if n * min_record_bytes <= os.fstat(f.fileno()).st_size else start


def _line_batches(f: BinaryIO, first_line: int) -> Iterator[tuple[int, list[bytes]]]:
    """Yield (number of the first line, lines without their "\\n") in batches of ~4 MiB."""
    line_no = first_line
    pending: list[bytes] = []  # Pieces of a line not yet ended; a list keeps long lines linear.
    while True:
        chunk = f.read(_BATCH_BYTES)
        if not chunk:
            if any(pending):
                yield line_no, [b"".join(pending)]
            return
        cut = chunk.rfind(b"\n")
        if cut < 0:
            pending.append(chunk)
            continue
        pending.append(chunk[:cut])
        lines = b"".join(pending).split(b"\n")
        pending = [chunk[cut + 1 :]]
        yield line_no, lines
        line_no += len(lines)


def _read_text(
    f: BinaryIO, name: str, fmt: str, header: tuple[int, int] | None, hint: str
) -> tuple[list[str], np.ndarray, EmbeddingReadStats]:
    first_line = 1
    if header is not None:
        n_expected, d = header
        first_line = 2
        source = f"the header on line 1 declares d={d}"
    else:
        n_expected = None
        d = _glove_dimension(f, name)
        source = f"line 1 has {d} values"
    rows = _Rows(d, _initial_capacity(f, n_expected, d, 2 * d), n_expected)
    state = _TextState(name=name, d=d, source=source + hint, n_expected=n_expected)
    last_line = first_line - 1
    for batch_first, lines in _line_batches(f, first_line):
        vectors = state.parse_batch(batch_first, lines)
        if vectors is not None:
            rows.extend(vectors)
        last_line = batch_first + len(lines) - 1
    if n_expected is not None and state.records < n_expected:
        raise EmbeddingFormatError(
            name,
            f"unexpected end of file: the header on line 1 declares {n_expected} words "
            f"but the file has {state.records}; fix the header's word count or restore "
            "the missing lines",
            line=1 + state.records + 1,
        )
    stats = EmbeddingReadStats(
        format=fmt,
        n=len(state.words),
        d=d,
        duplicates_skipped=state.duplicates,
        lines_read=last_line,
    )
    return state.words, rows.result(), stats


def _glove_dimension(f: BinaryIO, name: str) -> int:
    """d of a GloVe file: the number of values on line 1. Leaves f where it was."""
    start = f.tell()
    first = _strip_line(f.readline().rstrip(b"\n"))
    f.seek(start)
    if not first:
        raise EmbeddingFormatError(name, f"the first line is empty; {_VALID_TEXT_LINE}", line=1)
    space = first.find(b" ")
    if space == 0:
        raise EmbeddingFormatError(
            name, f"the word is empty (the line starts with a space); {_VALID_TEXT_LINE}", line=1
        )
    if space < 0:
        raise EmbeddingFormatError(name, f"the line has a word but no values; {_VALID_TEXT_LINE}", line=1)
    return first.count(b" ", space + 1) + 1


def _strip_line(line: bytes) -> bytes:
    """Drop a "\\r" left by CRLF line ends, then trailing ASCII spaces."""
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.rstrip(b" ")


@dataclasses.dataclass
class _TextState:
    """Running state of a text read: words so far, duplicates, records, pending blank line."""

    name: str
    d: int
    source: str  # Where d came from, for dimension-mismatch messages.
    n_expected: int | None
    words: list[str] = dataclasses.field(default_factory=list)
    seen: set[str] = dataclasses.field(default_factory=set)
    duplicates: int = 0
    records: int = 0
    blank_line: int | None = None  # First blank line of the current run of blank lines.

    def parse_batch(self, first: int, lines: list[bytes]) -> np.ndarray | None:
        """Parse a batch of lines; returns its new rows, or raises at the first bad line.

        The fast path only checks structure per line and parses all values of the batch
        with one numpy call; anything unexpected sends the batch to `_diagnose`, which
        walks it line by line and raises for the first bad line.
        """
        d = self.d
        spaces = d - 1
        words: list[str] = []
        values: list[bytes] = []
        blank_line = self.blank_line
        ok = True
        for i, raw in enumerate(lines):
            line = _strip_line(raw)
            if not line:
                if blank_line is None:
                    blank_line = first + i
                continue
            space = line.find(b" ")
            if blank_line is not None or space <= 0 or line.count(b" ", space + 1) != spaces:
                ok = False
                break
            try:
                words.append(line[:space].decode("utf-8"))
            except UnicodeDecodeError:
                ok = False
                break
            values.append(line[space + 1 :])
        if ok and self.n_expected is not None and self.records + len(words) > self.n_expected:
            ok = False
        if ok and values:
            joined = b" ".join(values)
            ok = not joined.translate(None, _NUMBER_BYTES) and b"  " not in joined
            ok = ok and not joined.startswith(b" ")
            if ok:
                try:
                    parsed = np.fromstring(joined, dtype=np.float64, sep=" ")
                except ValueError:
                    ok = False
                else:
                    ok = parsed.size == len(values) * d
            if ok:
                with np.errstate(over="ignore"):
                    vectors = parsed.astype(np.float32).reshape(len(values), d)
                ok = bool(np.isfinite(vectors).all())
        if not ok:
            self._diagnose(first, lines)
            raise EmbeddingFormatError(  # _diagnose always raises; this guards a gap in it.
                self.name,
                f"could not parse lines {first}-{first + len(lines) - 1}; {_VALID_TEXT_LINE}",
                line=first,
            )
        self.blank_line = blank_line
        self.records += len(words)
        if not words:
            return None
        keep = self._dedupe(words)
        return vectors if keep is None else vectors[keep]

    def _dedupe(self, words: list[str]) -> np.ndarray | None:
        """Record new words; returns a row mask if the batch had duplicates, else None."""
        seen = self.seen
        keep = None
        for i, word in enumerate(words):
            if word in seen:
                if keep is None:
                    keep = np.ones(len(words), dtype=bool)
                keep[i] = False
                self.duplicates += 1
            else:
                seen.add(word)
                self.words.append(word)
        return keep

    def _diagnose(self, first: int, lines: list[bytes]) -> None:
        """Raise EmbeddingFormatError for the first bad line of the batch."""
        d = self.d
        blank_line = self.blank_line
        records = self.records
        for i, raw in enumerate(lines):
            line_no = first + i
            line = _strip_line(raw)
            if not line:
                if blank_line is None:
                    blank_line = line_no
                continue

            def fail(problem: str, at: int = line_no) -> EmbeddingFormatError:
                return EmbeddingFormatError(self.name, problem, line=at)

            if blank_line is not None:
                raise fail(
                    f"empty line; blank lines are allowed only at the end of the file, {_VALID_TEXT_LINE}",
                    at=blank_line,
                )
            if self.n_expected is not None and records == self.n_expected:
                raise fail(
                    f"the header on line 1 declares {self.n_expected} words but more lines "
                    "follow; expected the end of the file (fix the header's word count)"
                )
            records += 1
            space = line.find(b" ")
            if space == 0:
                raise fail(f"the word is empty (the line starts with a space); {_VALID_TEXT_LINE}")
            word = line if space < 0 else line[:space]
            try:
                word.decode("utf-8")
            except UnicodeDecodeError as e:
                raise fail(
                    f"the word is not valid UTF-8 (bad byte at offset {e.start} of the word); words must be UTF-8 text"
                ) from None
            fields = [] if space < 0 else line[space + 1 :].split(b" ")
            if b"" in fields:
                raise fail(
                    f"value {fields.index(b'') + 1} is empty (two spaces in a row); values "
                    "must be separated by exactly one ASCII space"
                )
            if len(fields) != d:
                extra = " (words may not contain ASCII spaces)" if len(fields) > d else ""
                raise fail(
                    f"dimension mismatch: expected {d} values after the word ({self.source}), got {len(fields)}{extra}"
                )
            for j, field in enumerate(fields, start=1):
                if _DECIMAL_RE.fullmatch(field) is None:
                    if _NONFINITE_RE.fullmatch(field) is not None:
                        raise fail(f"value {j} of {d} is not finite; values must be finite numbers")
                    raise fail(f"value {j} of {d} is not a decimal number; values must look like 0.25, -1.5 or 3e-05")
                with np.errstate(over="ignore"):
                    value = np.float32(float(field))
                if not np.isfinite(value):
                    raise fail(
                        f"value {j} of {d} is not finite in float32 (its magnitude exceeds "
                        "3.4e38); values must be finite float32 numbers"
                    )


def _read_binary(
    f: BinaryIO, name: str, n: int, d: int, offset: int
) -> tuple[list[str], np.ndarray, EmbeddingReadStats]:
    vector_bytes = 4 * d
    rows = _Rows(d, _initial_capacity(f, n, d, vector_bytes + 2), n)
    words: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    buf = b""
    pos = 0  # Position in buf; offset is the file offset of buf[0].
    eof = False
    little_endian_f4 = np.dtype("<f4")

    def fill(end: int) -> bool:
        """Read until buf holds `end` bytes, or to the end of the file; True if it does."""
        nonlocal buf, eof
        parts, have = [buf], len(buf)
        while have < end and not eof:
            chunk = f.read(_BINARY_CHUNK_BYTES)
            eof = not chunk
            parts.append(chunk)
            have += len(chunk)
        if len(parts) > 1:
            buf = b"".join(parts)
        return have >= end

    for record in range(1, n + 1):
        if pos > _BINARY_CHUNK_BYTES:  # Drop consumed bytes.
            buf, offset, pos = buf[pos:], offset + pos, 0
        start = pos

        def fail(problem: str) -> EmbeddingFormatError:
            return EmbeddingFormatError(name, problem, record=record, byte_offset=offset + start)

        fill(pos + 1)
        if buf[pos : pos + 1] == b"\n":
            pos += 1
        space = buf.find(b" ", pos, pos + _MAX_BINARY_WORD_BYTES + 1)
        while space < 0:
            searched = len(buf)
            if searched - pos > _MAX_BINARY_WORD_BYTES:
                raise fail(
                    f"no space ends the word within {_MAX_BINARY_WORD_BYTES} bytes; each "
                    "record must be the word, one ASCII space and d float32 values"
                )
            if not fill(searched + 1):
                if pos == len(buf):
                    raise fail(
                        f"unexpected end of file: the header on line 1 declares {n} words "
                        f"but the file has {record - 1}; fix the header or restore the records"
                    )
                raise fail(
                    "the file is truncated inside the word; expected the word, one ASCII "
                    f"space and {vector_bytes} bytes of float32 values"
                )
            space = buf.find(b" ", searched, pos + _MAX_BINARY_WORD_BYTES + 1)
        if space == pos:
            raise fail("the word is empty; each record must start with a non-empty word")
        end = space + 1 + vector_bytes
        if not fill(end):
            raise fail(
                f"the file is truncated: the vector needs {vector_bytes} bytes "
                f"({d} float32 values) but only {len(buf) - space - 1} remain"
            )
        try:
            word = buf[pos:space].decode("utf-8")
        except UnicodeDecodeError as e:
            raise fail(
                f"the word is not valid UTF-8 (bad byte at offset {e.start} of the word); words must be UTF-8 text"
            ) from None
        vector = np.frombuffer(buf, dtype=little_endian_f4, count=d, offset=space + 1)
        if not np.isfinite(vector).all():
            bad = int(np.flatnonzero(~np.isfinite(vector))[0]) + 1
            raise fail(f"value {bad} of {d} is not finite; values must be finite float32 numbers")
        pos = end
        if word in seen:
            duplicates += 1
            continue
        seen.add(word)
        words.append(word)
        rows.append(vector)

    fill(pos + 2)
    trailing = buf[pos:]
    if trailing and trailing != b"\n":
        raise EmbeddingFormatError(
            name,
            f"the header on line 1 declares {n} words but more data follows; expected the "
            "end of the file (fix the header's word count)",
            record=n + 1,
            byte_offset=offset + pos,
        )
    stats = EmbeddingReadStats(
        format="word2vec-binary",
        n=len(words),
        d=d,
        duplicates_skipped=duplicates,
        lines_read=1 + n,
    )
    return words, rows.result(), stats
