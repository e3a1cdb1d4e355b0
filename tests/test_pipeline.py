"""The whole job on the DirectRunner: every record once, formats, OOV policies, report, errors."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest

from dptext.pipeline.options import OptionsError
from dptext.pipeline.run import run
from dptext.transforms.index import EmbeddingIndex
from dptext.transforms.mechanisms.truncated_gumbel import smallest_feasible_epsilon
from tests.conftest import dptext_counters, shard_lines

WORDS = (
    "the cat sat on a mat and dog ran to park hello world she he it was is good bad "
    "movie great terrible love hate day night happy sad i you we they this that"
).split()
SECRET = "zebracorn"  # an out-of-vocabulary marker: must never leak outside the documents output


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("index")
    EmbeddingIndex.build(WORDS, rng.normal(size=(len(WORDS), 6)).astype(np.float32), out, neighbours=8, progress=False)
    return out


@pytest.fixture(scope="module")
def feasible_epsilon(index_dir):
    index = EmbeddingIndex.load(index_dir)
    return 1.5 * smallest_feasible_epsilon(index.n, index.dmin)


def _run(index_dir, tmp_path, inputs, epsilon, *extra):
    output = str(tmp_path / "out" / "corpus")
    result = run(
        [
            "--input",
            inputs,
            "--output",
            output,
            "--index",
            str(index_dir),
            "--epsilon",
            str(epsilon),
            "--runner",
            "DirectRunner",
            *extra,
        ]
    )
    return output, result


def _write_jsonl_with_broken_records(path: Path) -> dict[int, str]:
    """A JSONL shard with good and broken records; returns byte offset -> expected outcome."""
    records = [
        (json.dumps({"id": 1, "label": "pos", "text": "The cat sat on the mat."}).encode(), "ok"),
        (b'{"id": 2, "text": "broken json', "invalid JSON"),
        (json.dumps({"id": 3, "body": f"no text field {SECRET}"}).encode(), "missing text field"),
        (json.dumps({"id": 4, "text": 42}).encode(), "is a int, not a string"),
        (b'{"id": 5, "text": "caf\xe9 ' + SECRET.encode() + b'"}', "not UTF-8"),
        (json.dumps({"id": 6, "text": "hello " * 50 + SECRET}).encode(), "exceeds --max-doc-chars"),
        (json.dumps({"id": 7, "meta": {"k": [1, 2.5, None]}, "text": f"I love this {SECRET} movie"}).encode(), "ok"),
        (b"[1, 2]", "not an object"),
        (json.dumps({"id": 9, "text": ""}).encode(), "ok"),
    ]
    expected, offset, blob = {}, 0, b""
    for raw, outcome in records:
        expected[offset] = outcome
        blob += raw + b"\n"
        offset += len(raw) + 1
    path.write_bytes(blob)
    return expected


def test_every_record_comes_out_once_jsonl(index_dir, feasible_epsilon, tmp_path, capfd):
    shard_a, shard_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    expected = {
        str(shard_a): _write_jsonl_with_broken_records(shard_a),
        str(shard_b): _write_jsonl_with_broken_records(shard_b),
    }
    output, result = _run(
        index_dir,
        tmp_path,
        str(tmp_path / "*.jsonl"),
        feasible_epsilon,
        "--max-doc-chars",
        "200",
        "--long-docs",
        "dead-letter",
    )

    outputs = [json.loads(line) for line in shard_lines(output + "-*.jsonl")]
    dead = [json.loads(line) for line in shard_lines(output + ".dead_letter-*.jsonl")]
    assert len(outputs) == 2 * 3 and len(dead) == 2 * 6
    seen = [(d["source"], d["offset"]) for d in dead]
    assert len(set(seen)) == len(seen)
    for d in dead:
        assert expected[d["source"]][d["offset"]] in d["reason"]
        assert set(d) == {"source", "offset", "reason"}
    ok_offsets = {(s, o) for s, per in expected.items() for o, outcome in per.items() if outcome == "ok"}
    assert set(seen).isdisjoint(ok_offsets)
    # Other fields ride along unchanged; the text field is replaced.
    by_id = {}
    for record in outputs:
        by_id.setdefault(record["id"], []).append(record)
    assert sorted(by_id) == [1, 7, 9]
    assert all(r["label"] == "pos" for r in by_id[1]) and all(r["meta"] == {"k": [1, 2.5, None]} for r in by_id[7])
    assert all(r["text"] == "" for r in by_id[9])
    # The OOV marker became the placeholder and appears nowhere but nowhere else either.
    assert all(SECRET not in r["text"] and "<unk>" in r["text"] for r in by_id[7])
    report = json.loads(Path(output + ".privacy_report.json").read_text("utf-8"))
    assert report["counts"]["documents"] == 6
    assert report["counts"]["oov"] == 2 and report["counts"]["tokens"] == 2 * (6 + 5 + 0)
    for path in glob.glob(output + ".dead_letter-*") + glob.glob(output + ".privacy_report.*"):
        assert SECRET not in Path(path).read_text("utf-8")
    counters = dptext_counters(result)
    # bytes in: the UTF-8 text of every document that reached the mechanism (the three kept per
    # shard and the over-long one); bytes out: the text written.
    long_text = ("hello " * 50 + SECRET).encode()
    assert counters.pop("bytes_out") == sum(len(r["text"].encode()) for r in outputs)
    assert counters.pop("bytes_in") == 2 * (
        len(b"The cat sat on the mat.") + len(long_text) + len(f"I love this {SECRET} movie".encode())
    )
    assert counters == {"documents": 6, "tokens": 22, "perturbed": 20, "oov": 2, "dead_lettered": 12}
    assert report["metrics"]["dead_lettered"] == 12 and report["metrics"]["bytes_in"] > 0
    captured = capfd.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err


def test_text_format_bytes_survive_when_the_mechanism_keeps_every_word(index_dir, tmp_path):
    # multivariate_laplace at an epsilon so large that the noise radius (~d / eps) is ~0: every
    # word maps to itself, so the output must reproduce the input exactly (separators, case,
    # CRLF, OOV kept), one line per document. (truncated_gumbel cannot do this: its Gumbel scale
    # only falls like 1 / ln(epsilon).)
    lines = [
        "The cat sat on the mat.",
        "  Hello,   WORLD!\t(she said)  ",
        "",
        "I love this movie\r",
        "unknownword; the dog ran",
        "日本 cat",
    ]
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("\n".join(lines).encode("utf-8") + b"\n\xff\xfe bad bytes\n")
    output, _ = _run(
        index_dir,
        tmp_path,
        str(corpus),
        1e9,
        "--oov",
        "keep",
        "--test-seed",
        "3",
        "--mechanism",
        "multivariate_laplace",
        "--search",
        "exact",
    )
    assert sorted(shard_lines(output + "-*.txt")) == sorted(lines)
    dead = [json.loads(line) for line in shard_lines(output + ".dead_letter-*.jsonl")]
    assert [d["reason"].split(" (")[0] for d in dead] == ["not UTF-8"]
    report = json.loads(Path(output + ".privacy_report.json").read_text("utf-8"))
    assert "TEST SEED" in report["randomness"]
    assert report["quality_figures"]["fraction_of_perturbed_tokens_changed"] == 0.0
    assert any("no protection" in line for line in report["statement"])


def test_random_oov_policy_uses_vocabulary_words(index_dir, feasible_epsilon, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Qwerty asdfgh zxcvb\n", encoding="utf-8")
    output, _ = _run(index_dir, tmp_path, str(corpus), feasible_epsilon, "--oov", "random")
    (line,) = shard_lines(output + "-*.txt")
    words = line.split(" ")
    assert len(words) == 3 and words[0][0].isupper()
    assert all(w.lower() in WORDS for w in words)


def test_multivariate_laplace_runs_and_reports_composed_bounds(index_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\nhello world\n", encoding="utf-8")
    output, _ = _run(index_dir, tmp_path, str(corpus), 3.0, "--mechanism", "multivariate_laplace")
    assert len(shard_lines(output + "-*.txt")) == 2
    report = json.loads(Path(output + ".privacy_report.json").read_text("utf-8"))
    bound = report["per_document_bound"]
    assert bound["basic"]["max"] == pytest.approx(6 * 3.0 * report["index"]["dmax"])
    assert bound["composed_at_delta"]["max"] <= bound["basic"]["max"]
    assert Path(output + ".privacy_report.md").read_text("utf-8").startswith("# dptext privacy report")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epsilon", "0"], "--epsilon must be a finite number > 0"),
        (["--epsilon", "1", "--mechanism", "nope"], "--mechanism 'nope' is unknown"),
        (["--epsilon", "0.5"], "smallest feasible epsilon is"),
    ],
)
def test_bad_options_are_clear_errors(index_dir, tmp_path, args, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        run(["--input", str(corpus), "--output", str(tmp_path / "o"), "--index", str(index_dir), *args])


def test_missing_index_and_input_are_clear_errors(index_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat\n", encoding="utf-8")
    with pytest.raises(Exception, match="index directory not found"):
        run(
            [
                "--input",
                str(corpus),
                "--output",
                str(tmp_path / "o"),
                "--index",
                str(tmp_path / "none"),
                "--epsilon",
                "100",
            ]
        )
    with pytest.raises(FileNotFoundError, match="no file matches"):
        run(
            [
                "--input",
                str(tmp_path / "*.nothing"),
                "--output",
                str(tmp_path / "o"),
                "--index",
                str(index_dir),
                "--epsilon",
                "100",
            ]
        )
    with pytest.raises(OptionsError, match="--index is required"):
        run(["--input", str(corpus), "--output", str(tmp_path / "o"), "--epsilon", "100"])


@pytest.mark.parametrize("runner", ["DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_runners_that_lose_data_are_refused(index_dir, tmp_path, runner):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat\n", encoding="utf-8")
    with pytest.raises(OptionsError, match=r"refused.*computes only the last sink"):
        run(
            [
                "--input",
                str(corpus),
                "--output",
                str(tmp_path / "o"),
                "--index",
                str(index_dir),
                "--epsilon",
                "100",
                "--runner",
                runner,
            ]
        )


def test_long_documents_are_split_between_words_and_rejoined(index_dir, tmp_path):
    # Identity mechanism (see above): the rejoined chunks must give back each document exactly.
    lines = ["The cat sat on the mat, " * 20 + "hello world", "short one", "dog " * 10 + "x" * 40]
    corpus = tmp_path / "long.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output, result = _run(
        index_dir,
        tmp_path,
        str(corpus),
        1e9,
        "--oov",
        "keep",
        "--mechanism",
        "multivariate_laplace",
        "--search",
        "exact",
        "--max-doc-chars",
        "30",
    )
    assert sorted(shard_lines(output + "-*.txt")) == sorted(lines[:2])
    (dead,) = [json.loads(line) for line in shard_lines(output + ".dead_letter-*.jsonl")]
    assert "has a word longer than that" in dead["reason"]
    report = json.loads(Path(output + ".privacy_report.json").read_text("utf-8"))
    assert report["counts"]["documents"] == 2 and report["counts"]["tokens"] == 6 * 20 + 2 + 2


def test_split_long_text_cuts_only_between_words():
    from dptext.transforms.beam import split_long_text

    text = "alpha beta, gamma-delta  epsilon"
    assert split_long_text(text, 6) is None  # "epsilon" has 7 characters
    for limit in range(7, len(text) + 1):
        chunks = split_long_text(text, limit)
        assert "".join(chunks) == text and all(len(c) <= limit for c in chunks)
        assert all(not (a[-1].isalnum() and b[0].isalnum()) for a, b in zip(chunks, chunks[1:]))
    assert split_long_text("abcdefgh ij", 4) is None


def test_parquet_columns_ride_along_with_their_types(index_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "score": pa.array([0.5, None, 1.5, 2.5], pa.float32()),
            "tags": pa.array([["a"], [], ["b", "c"], None], pa.list_(pa.string())),
            "text": pa.array(["The cat sat", None, "hello world", "good day"], pa.string()),
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=2)
    output, _ = _run(
        index_dir,
        tmp_path,
        str(tmp_path / "*.parquet"),
        1e9,
        "--mechanism",
        "multivariate_laplace",
        "--search",
        "exact",
    )
    written = pq.read_table(glob.glob(output + "-*.parquet"))
    assert written.schema.equals(table.schema)
    rows = sorted(written.to_pylist(), key=lambda r: r["id"])
    assert rows == [r for r in table.to_pylist() if r["text"] is not None]  # identity mechanism
    (dead,) = [json.loads(line) for line in shard_lines(output + ".dead_letter-*.jsonl")]
    assert dead["offset"] == 1 and "is a NoneType, not a string" in dead["reason"]


def test_parquet_file_without_the_text_column_fails_before_processing(index_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a cat"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"body": ["a cat"]}), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"b.parquet: no column 'text'"):
        run(
            [
                "--input",
                str(tmp_path / "*.parquet"),
                "--output",
                str(tmp_path / "o"),
                "--index",
                str(index_dir),
                "--epsilon",
                "100",
            ]
        )
